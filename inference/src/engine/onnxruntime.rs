//! The ONNX Runtime engine: one session, run on the calling thread.

use super::{rt, Engine, EngineKind, Port};
use crate::InferenceError;
use ndarray::{ArrayD, ArrayView4};
use ort::session::Session;
use ort::value::{TensorRef, ValueType};

/// An ONNX Runtime session.
pub struct OrtEngine(pub Session);

fn ort_port(name: &str, t: &ValueType) -> Port {
    let shape = match t {
        ValueType::Tensor { shape, .. } => Some(shape.iter().copied().collect()),
        _ => None,
    };
    Port { name: name.to_owned(), shape }
}

impl Engine for OrtEngine {
    fn run_output(&mut self, input: ArrayView4<'_, f32>, output: usize) -> Result<ArrayD<f32>, InferenceError> {
        let outputs = self.0.run(ort::inputs![TensorRef::from_array_view(input).map_err(rt)?]).map_err(rt)?;
        if output >= outputs.len() {
            return Err(rt(format!("the graph has {} outputs, not {}", outputs.len(), output + 1)));
        }
        Ok(outputs[output].try_extract_array::<f32>().map_err(rt)?.to_owned())
    }

    fn metadata(&self, key: &str) -> Option<String> {
        self.0.metadata().ok()?.custom(key)
    }

    fn inputs(&self) -> Vec<Port> {
        self.0.inputs().iter().map(|i| ort_port(i.name(), i.dtype())).collect()
    }

    fn outputs(&self) -> Vec<Port> {
        self.0.outputs().iter().map(|o| ort_port(o.name(), o.dtype())).collect()
    }

    fn kind(&self) -> EngineKind {
        EngineKind::OnnxRuntime
    }
}
