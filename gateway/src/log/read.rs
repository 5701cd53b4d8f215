//! Reading records back, bounded by sequence and count: a record that
//! cannot be read (torn, checksum, segment missing) is set aside and
//! reported as a gap, never returned and never a reason to stop.

use super::*;

impl DurableLog {
    /// Reads up to `max` frames with `seq >= from`, in order. Unreadable
    /// records are set aside and skipped.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_frames(&self, from: u64, max: usize) -> Result<Vec<(u64, FrameRecord)>, LogError> {
        self.read(Area::Frames, from..u64::MAX, max, FrameRecord::decode)
    }

    /// The frame record at `seq` in `area` (frames or sampled images), if
    /// present and readable (an unreadable one is set aside).
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_area_frame(&self, area: Area, seq: u64) -> Result<Option<FrameRecord>, LogError> {
        Ok(self.read(area, seq..seq.saturating_add(1), 1, FrameRecord::decode)?.into_iter().next().map(|(_, f)| f))
    }

    /// Reads up to `max` frame records of `area` (frames or sampled images)
    /// with seq in `from..to`, in order. Unreadable records are set aside
    /// and skipped.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_area_frames(
        &self,
        area: Area,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<(u64, FrameRecord)>, LogError> {
        self.read(area, from..to, max, FrameRecord::decode)
    }

    /// Reads up to `max` stage-encoded records of `area` with key in
    /// `from..to`. Unreadable records are set aside and skipped.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_blobs(&self, area: Area, from: u64, to: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.read(area, from..to, max, |v| match codec::decode(v)? {
            (RecordKind::Blob, b) => Ok(b.to_vec()),
            (k, _) => Err(CodecError::Malformed(format!("expected a blob, found {k:?}"))),
        })
    }

    /// Reads up to `max` gap records with id in `from..to`.
    ///
    /// # Errors
    /// [`LogError::Storage`], [`LogError::Io`].
    pub fn read_gaps(&self, from: u64, to: u64, max: usize) -> Result<Vec<(u64, GapRecord)>, LogError> {
        self.read(Area::Gaps, from..to, max, |v| match codec::decode(v)? {
            (RecordKind::Gap, b) => serde_json::from_slice(b).map_err(|e| CodecError::Malformed(e.to_string())),
            (k, _) => Err(CodecError::Malformed(format!("expected a gap, found {k:?}"))),
        })
    }

    pub(super) fn read<T>(
        &self,
        area: Area,
        seqs: std::ops::Range<u64>,
        max: usize,
        decode: impl Fn(&[u8]) -> Result<T, CodecError>,
    ) -> Result<Vec<(u64, T)>, LogError> {
        let (from, to) = (seqs.start, seqs.end);
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let start = key(area.prefix(), from);
        let end = if to == u64::MAX { key(area.prefix() + 1, 0) } else { key(area.prefix(), to) };
        for kv in self.inner.index.tree.range(start.as_slice()..end.as_slice()) {
            if out.len() >= max {
                break;
            }
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            let record = match Slot::of(&v) {
                Slot::Ptr(p) => self.fetch(&p, area, seq)?,
                Slot::Inline(_) => Ok(v.to_vec()),
            };
            match record.map_err(|d| d.to_string()).and_then(|r| decode(&r).map_err(|e| e.to_string())) {
                Ok(t) => out.push((seq, t)),
                Err(why) => self.set_aside(area, seq, &v, why)?,
            }
        }
        Ok(out)
    }

    /// Reads a segment record (positioned read, nothing cached).
    pub(super) fn fetch(
        &self,
        p: &segments::SegPtr,
        area: Area,
        seq: u64,
    ) -> Result<Result<Vec<u8>, String>, LogError> {
        let handle = self.inner.lock().segs.handle(p.segment);
        let file = match handle {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(segments::SegmentDamage::Missing(p.segment).to_string()))
            }
            Err(e) => return Err(self.inner.seg_io(e)),
        };
        match read_record(&file, p, seq, area.prefix()) {
            Ok(r) => Ok(r.map_err(|d| d.to_string())),
            Err(e) => Err(self.inner.seg_io(e)),
        }
    }

    fn set_aside(&self, area: Area, seq: u64, raw: &[u8], why: String) -> Result<(), LogError> {
        let mut core = self.inner.lock();
        let k = key(area.prefix(), seq);
        // Another reader may have moved it already.
        if self.inner.index.tree.get(k)?.as_deref() != Some(raw) {
            return Ok(());
        }
        let mut txn = Txn::new(&self.inner, &mut core);
        let bytes = txn.remove(area, seq)?.unwrap_or(0);
        let mut aside = vec![ASIDE_PREFIX];
        aside.extend_from_slice(&k);
        txn.batch.insert(aside, raw);
        txn.state.set_aside += 1;
        if area != Area::Gaps {
            txn.gap(Lost { area, from: seq, to: seq, records: 1, bytes }, GapReason::Unreadable, Some(why.clone()))?;
        }
        self.finish(txn)?;
        self.inner.publish_used(&core);
        tracing::error!(area = area.name(), seq, error = %why, "unreadable log record set aside");
        Ok(())
    }
}
