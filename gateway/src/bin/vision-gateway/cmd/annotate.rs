//! `annotate`: runs a model on image files, one annotation per image (a
//! line of JSON each with `--json`), optionally with a config's label
//! fields and code reader, to check formats and the print-against-code
//! cross-check before deploying them.

use anyhow::{Context, Result};
use gateway::config::Config;
use inference::Annotation;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder (with model.toml).
    #[arg(long, default_value = "models/ppocr-v6")]
    pub model: PathBuf,
    /// libonnxruntime.so.1.31.1 (default: $ORT_DYLIB_PATH, then
    /// models/runtime/<arch>/, then /usr/lib/vision-gateway/).
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
    /// Threads the runtime may use per run.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Runtime: auto (ONNX Runtime where its library is, else tract;
    /// a manifest's `backend` is followed), onnxruntime or tract.
    #[arg(long, default_value = "auto", value_parser = ["auto", "onnxruntime", "tract"])]
    pub backend: String,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// A gateway config: read its `[[fields]]` and apply its
    /// `[detect.text]` and `[detect.codes]` (the rest of the file is not
    /// needed), to check formats and the code cross-check on sample images
    /// before deploying them.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read the codes on the label too, with `[detect.codes]`'s defaults
    /// (a --config with that section uses its settings).
    #[arg(long)]
    pub codes: bool,
    /// With --config: apply the fields declared for this camera id
    /// (default: every field, whatever its `cameras`).
    #[arg(long, requires = "config")]
    pub camera: Option<String>,
    /// JPEG or PNG files.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Exit 1 if an image could not be read as a frame, 2 for a bad config.
pub fn run(args: Args) -> Result<ExitCode> {
    let cwd = std::env::current_dir().ok();
    let library = inference::runtime::default_library(args.onnxruntime.as_deref(), cwd.as_deref());
    let backend = inference::engine::Backend::parse(&args.backend).unwrap_or_default();
    let (decls, filter, mut codes) = match &args.config {
        Some(path) => match Config::load_fields(path) {
            Ok(x) => (x.fields, x.text, x.codes),
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(2));
            }
        },
        None => (Vec::new(), inference::ocr::TextFilter::default(), None),
    };
    if args.codes && codes.is_none() {
        codes = Some(inference::codes::CodeOptions::default());
    }
    let camera = args.camera.as_deref();
    let decls: Vec<_> = decls.into_iter().filter(|d| camera.is_none_or(|c| d.applies(c))).collect();
    let opts = inference::LoadOptions {
        intra_threads: args.threads,
        text_filter: filter,
        codes,
        ..inference::LoadOptions::new(library, backend)
    };
    let mut m = inference::Model::load(&args.model, &opts)
        .with_context(|| format!("cannot load the model in {}", args.model.display()))?;
    let compiled = m.compile_fields(decls.iter().map(|d| &d.spec)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let fields: Vec<&inference::fields::Field> = compiled.iter().collect();
    let mut failed = false;
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let a = m.annotate_with(&bytes, &fields)?;
        failed |= a.error.is_some();
        if args.json {
            let mut v = serde_json::to_value(&a)?;
            v["file"] = serde_json::Value::String(path.display().to_string());
            println!("{}", serde_json::to_string(&v)?);
        } else {
            print!("{}", text(&path.display().to_string(), &a));
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// One image's annotation for a person: the model, each item with its box,
/// each field with its score.
fn text(file: &str, a: &Annotation) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{file} ({}x{}, {} {} {:.12} on {} {}, {:.0} ms)",
        a.width,
        a.height,
        a.model.name,
        a.model.version,
        a.model.hash,
        a.model.backend,
        a.model.backend_version,
        a.timings.total_ms()
    );
    if let Some(e) = &a.error {
        let _ = writeln!(o, "  error: {e}");
    }
    for it in &a.items {
        let what = it.text.as_deref().or(it.label.as_deref()).unwrap_or("");
        let [x0, y0, x1, y1] = it.bbox;
        let _ = writeln!(o, "  {:>5.3}  [{x0:.0}, {y0:.0}, {x1:.0}, {y1:.0}]  {what}", it.score);
    }
    for c in &a.codes {
        let [x0, y0, x1, y1] = c.bbox;
        let text = c.shown_text();
        let _ = writeln!(o, "  code {} [{x0:.0}, {y0:.0}, {x1:.0}, {y1:.0}]  {text:?}", c.symbology.name());
        if let Some(m) = &c.gs1 {
            let ais: Vec<String> = m.iter().map(|(ai, v)| format!("({ai}) {v}")).collect();
            let _ = writeln!(o, "    gs1 {}", ais.join("  "));
        }
        if let Some(e) = &c.gs1_error {
            let _ = writeln!(o, "    gs1 error: {e}");
        }
    }
    if a.codes_timeout {
        let _ = writeln!(
            o,
            "  codes: TIMEOUT after {:.0} ms (detect.codes.budget): codes may be missing",
            a.timings.codes_ms
        );
    }
    if let Some(e) = &a.codes_error {
        let _ = writeln!(o, "  codes: error: {e}");
    }
    for (name, f) in &a.fields {
        let uncertain = if f.uncertain { " UNCERTAIN" } else { "" };
        let check = match (f.verified, &f.code) {
            (Some(true), _) => "  code agrees".to_owned(),
            (Some(false), Some(c)) => format!("  MISMATCH: code says {c:?}"),
            _ if a.unverified.contains(name) => "  unverified (no code carries it)".to_owned(),
            _ => String::new(),
        };
        let _ =
            writeln!(o, "  field {name} = {:?}  score {:.3}{uncertain}  (read {:?}){check}", f.value, f.score, f.raw);
    }
    if !a.missing.is_empty() {
        let _ = writeln!(o, "  missing: {}", a.missing.join(", "));
    }
    if !a.mismatches.is_empty() {
        let _ = writeln!(o, "  mismatches: {}", a.mismatches.join(", "));
    }
    o
}
