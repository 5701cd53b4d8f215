//! Measurements printed by `vision-gateway bench`.
//!
//! Owns the benchmark figures quoted in the README and issue notes. Each
//! benchmark measures the project next to a baseline in the same run and
//! prints the ratio, so figures from different machines compare.

use crate::log::{DurableLog, FrameRecord, LogOptions, WhenFull};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// What was measured.
    pub what: String,
    /// Records written.
    pub records: u64,
    /// Payload bytes written.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
}

impl Throughput {
    fn new(what: String, records: u64, bytes: u64, d: Duration) -> Self {
        Self { what, records, bytes, seconds: d.as_secs_f64() }
    }
    /// Records per second.
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    /// MB (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
}

/// Results of the log benchmark: for each batch size, raw write+fsync and
/// the log's append+flush.
#[derive(Debug, Clone, Serialize)]
pub struct LogBench {
    /// Record payload size.
    pub record_bytes: usize,
    /// (batch, raw, log) per batch size.
    pub rows: Vec<(usize, Throughput, Throughput)>,
}

/// Measures append+flush of `records` records of `size` bytes against raw
/// sequential write+fsync to a file in the same directory, flushing every
/// `batch` records, for each batch size.
///
/// # Errors
/// I/O or log errors.
pub async fn log_throughput(dir: &Path, records: u64, size: usize, batches: &[usize]) -> anyhow::Result<LogBench> {
    let mut payload = vec![0u8; size];
    // Incompressible-looking bytes (sled does not compress, but be fair).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in &mut payload {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut rows = Vec::new();
    for &batch in batches {
        let batch = batch.max(1);
        // Raw baseline: sequential write, fdatasync per batch.
        let raw_path = dir.join(format!("raw-{batch}.bin"));
        let mut f = std::fs::File::create(&raw_path)?;
        let t = Instant::now();
        for i in 0..records {
            f.write_all(&payload)?;
            if (i + 1) % batch as u64 == 0 || i + 1 == records {
                f.sync_data()?;
            }
        }
        let raw =
            Throughput::new(format!("raw write+fdatasync, batch {batch}"), records, records * size as u64, t.elapsed());
        drop(f);
        std::fs::remove_file(&raw_path)?;

        let log_dir = dir.join(format!("log-{batch}"));
        let mut o = LogOptions::new(&log_dir, "bench");
        o.max_bytes = u64::MAX / 2;
        o.when_full = WhenFull::Block;
        let log = DurableLog::open(o)?;
        let mut frame = FrameRecord {
            camera: "cam-1".into(),
            content_type: "image/jpeg".into(),
            received_at_ms: 0,
            captured_at_ms: None,
            camera_seq: None,
            payload: payload.clone(),
        };
        let t = Instant::now();
        for i in 0..records {
            frame.received_at_ms = i;
            log.append_frame(&frame)?;
            if (i + 1) % batch as u64 == 0 || i + 1 == records {
                log.flush().await?;
            }
        }
        let lg =
            Throughput::new(format!("log append+flush, batch {batch}"), records, records * size as u64, t.elapsed());
        drop(log);
        std::fs::remove_dir_all(&log_dir)?;
        rows.push((batch, raw, lg));
    }
    Ok(LogBench { record_bytes: size, rows })
}

impl std::fmt::Display for LogBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "log throughput, {} B records (same disk, same run)", self.record_bytes)?;
        writeln!(f, "{:<34} {:>10} {:>10} {:>8}", "", "records/s", "MB/s", "ratio")?;
        for (_, raw, lg) in &self.rows {
            writeln!(f, "{:<34} {:>10.0} {:>10.1} {:>8}", raw.what, raw.records_per_s(), raw.mb_per_s(), "1.00")?;
            writeln!(
                f,
                "{:<34} {:>10.0} {:>10.1} {:>8.2}",
                lg.what,
                lg.records_per_s(),
                lg.mb_per_s(),
                lg.mb_per_s() / raw.mb_per_s()
            )?;
        }
        Ok(())
    }
}
