//! tract (pure Rust, no vendor library) running one ONNX graph with one f32
//! input of rank 4: the second engine behind [`crate::engine::Engine`].
//!
//! Owns the graph and its optimised plans. Promise: the graph is parsed
//! once; a plan is optimised once per input shape and the most recently
//! used [`PLANS`] are kept (PP-OCR's detector sees one shape per frame
//! size, its recogniser one per batch width; a detector or classifier has
//! one fixed shape, planned at load). PP-OCR's recogniser cannot be planned
//! for a symbolic width (a reshape in its neck needs concrete sizes), so a
//! new width costs one optimisation, about 0.2 s.
//!
//! Threads: with `threads > 1` the matrix products of a run are spread over
//! a private pool of that many threads (tract's `multithread-mm`).

use super::{Engine, EngineKind, Port};
use crate::InferenceError;
use ndarray::{ArrayD, ArrayView4};
use std::path::Path;
use std::sync::Arc;
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Optimised plans kept, most recently used first.
pub const PLANS: usize = 8;

fn rt(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Runtime(format!("tract: {e:#}"))
}

/// One ONNX graph under tract.
pub struct TractGraph {
    model: InferenceModel,
    plans: Vec<(Vec<usize>, Arc<TypedRunnableModel>)>,
    executor: Executor,
}

impl std::fmt::Debug for TractGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractGraph").field("plans", &self.plans.len()).finish_non_exhaustive()
    }
}

fn fact_shape(f: &InferenceFact) -> Option<Vec<i64>> {
    let dims = f.shape.dims().collect::<Vec<_>>();
    if !f.shape.is_open() || !dims.is_empty() {
        Some(dims.iter().map(|d| d.concretize().and_then(|d| d.to_i64().ok()).unwrap_or(-1)).collect())
    } else {
        None
    }
}

impl TractGraph {
    /// Parses the graph at `path`; runs will use `threads` threads.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if tract cannot read it.
    pub fn load(path: &Path, threads: usize) -> Result<Self, InferenceError> {
        // The file's intermediate shapes (`value_info`) are ignored: tract
        // infers them from the input each plan gives, and PP-OCRv6's
        // recogniser declares them with named symbols that a concrete batch
        // and width cannot unify with ("Impossible to unify
        // Sym(DynamicDimension.0) with Val(5)").
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_path(path)
            .map_err(|e| rt(format!("{}: {e}", path.display())))?;
        if model.input_outlets().map_err(rt)?.len() != 1 {
            return Err(rt(format!("{}: the gateway feeds graphs with exactly one input", path.display())));
        }
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        Ok(Self { model, plans: Vec::new(), executor })
    }

    /// A string from the graph's `metadata_props`, if present.
    pub fn metadata(&self, key: &str) -> Option<String> {
        let t = self.model.properties.get(&format!("onnx.metadata_props.{key}"))?;
        t.to_plain_array_view::<String>().ok()?.iter().next().cloned()
    }

    fn label(&self, outlet: OutletId) -> String {
        self.model.outlet_label(outlet).map_or_else(|| self.model.node(outlet.node).name.clone(), str::to_owned)
    }

    /// The graph's inputs, as the file declares them.
    pub fn inputs(&self) -> Vec<Port> {
        let Ok(outlets) = self.model.input_outlets() else { return Vec::new() };
        outlets
            .iter()
            .map(|o| Port { name: self.label(*o), shape: self.model.outlet_fact(*o).ok().and_then(fact_shape) })
            .collect()
    }

    /// The graph's outputs; shapes from the most recent plan (concrete), or
    /// as the file declares them if nothing was planned yet.
    pub fn outputs(&self) -> Vec<Port> {
        let Ok(outlets) = self.model.output_outlets() else { return Vec::new() };
        outlets
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let planned = self.plans.first().and_then(|(_, p)| {
                    let f = p.model().output_fact(i).ok()?;
                    f.shape.as_concrete().map(|d| d.iter().map(|&x| x as i64).collect())
                });
                Port {
                    name: self.label(*o),
                    shape: planned.or_else(|| self.model.outlet_fact(*o).ok().and_then(fact_shape)),
                }
            })
            .collect()
    }

    /// The plan for inputs of `shape`, optimised now if it is not cached.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if the graph cannot take that shape.
    pub fn plan(&mut self, shape: &[usize]) -> Result<Arc<TypedRunnableModel>, InferenceError> {
        if let Some(i) = self.plans.iter().position(|(s, _)| s == shape) {
            let p = self.plans.remove(i);
            let plan = p.1.clone();
            self.plans.insert(0, p);
            return Ok(plan);
        }
        let plan = self
            .model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .map_err(rt)?
            .into_optimized()
            .map_err(rt)?
            .into_runnable()
            .map_err(rt)?;
        self.plans.insert(0, (shape.to_vec(), plan.clone()));
        self.plans.truncate(PLANS);
        Ok(plan)
    }

    /// Runs the graph on `input`; returns output number `output`.
    ///
    /// # Errors
    /// [`InferenceError::Runtime`] if the plan cannot be made or run.
    pub fn run(&mut self, input: ArrayView4<'_, f32>, output: usize) -> Result<ArrayD<f32>, InferenceError> {
        let plan = self.plan(input.shape())?;
        let t: Tensor = input.to_owned().into_dyn().into();
        let out = multithread_tract_scope(self.executor.clone(), || plan.run(tvec!(t.into()))).map_err(rt)?;
        let n = out.len();
        let chosen =
            out.into_iter().nth(output).ok_or_else(|| rt(format!("the graph has {n} outputs, not {}", output + 1)))?;
        let chosen = chosen.into_tensor();
        let view = chosen.to_plain_array_view::<f32>().map_err(rt)?;
        Ok(view.to_owned())
    }
}

impl Engine for TractGraph {
    fn run_output(&mut self, input: ArrayView4<'_, f32>, output: usize) -> Result<ArrayD<f32>, InferenceError> {
        TractGraph::run(self, input, output)
    }

    fn metadata(&self, key: &str) -> Option<String> {
        TractGraph::metadata(self, key)
    }

    fn inputs(&self) -> Vec<Port> {
        TractGraph::inputs(self)
    }

    fn outputs(&self) -> Vec<Port> {
        TractGraph::outputs(self)
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Tract
    }

    fn prepare(&mut self, shape: &[usize]) -> Result<(), InferenceError> {
        self.plan(shape).map(drop)
    }
}
