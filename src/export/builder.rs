//! A small ONNX graph builder over the `prost` messages of [`super::onnx_proto`]: unique
//! tensor names, nodes with typed attributes, initializers from Rust slices (little-endian
//! `raw_data`), graph inputs and outputs with a symbolic batch dimension.

use super::onnx_proto::{
    attribute_type, data_type, tensor_shape_proto, type_proto, AttributeProto, GraphProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::HashSet;

/// The symbolic name of the batch dimension of every graph input and output.
pub const BATCH: &str = "batch";

/// Accumulates the nodes and initializers of one graph.
#[derive(Default)]
pub struct GraphBuilder {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    names: HashSet<String>,
}

/// One attribute of a node.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
}

impl GraphBuilder {
    /// `base`, or `base_2`, `base_3`, ... if taken: a tensor (or node) name not used before.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 2;
        while self.names.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds a node with one output named after `out` (made unique) and returns that name.
    pub fn node(&mut self, op: &str, out: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let o = self.fresh(out);
        self.node_outputs(op, std::slice::from_ref(&o), inputs, attrs);
        o
    }

    /// Adds a node with the given (already unique) outputs.
    pub fn node_outputs(&mut self, op: &str, outputs: &[String], inputs: &[&str], attrs: Vec<(&str, Attr)>) {
        let name = self.fresh(&format!("{}/{op}", outputs.first().map(String::as_str).unwrap_or(op)));
        let attribute = attrs.into_iter().map(|(n, a)| attribute(n, a)).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.to_vec(),
            name: Some(name),
            op_type: Some(op.to_string()),
            domain: None,
            attribute,
            doc_string: None,
        });
    }

    fn init(&mut self, name: &str, dtype: i32, dims: &[i64], raw: Vec<u8>) -> String {
        let n = self.fresh(name);
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(dtype),
            name: Some(n.clone()),
            raw_data: Some(raw),
            ..Default::default()
        });
        n
    }

    /// An f32 initializer of shape `dims`.
    pub fn init_f32(&mut self, name: &str, dims: &[i64], v: &[f32]) -> String {
        debug_assert_eq!(v.len() as i64, dims.iter().product::<i64>());
        self.init(name, data_type::FLOAT, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    /// An int8 initializer.
    pub fn init_i8(&mut self, name: &str, dims: &[i64], v: &[i8]) -> String {
        debug_assert_eq!(v.len() as i64, dims.iter().product::<i64>());
        self.init(name, data_type::INT8, dims, v.iter().map(|&x| x as u8).collect())
    }
    /// A uint8 initializer.
    pub fn init_u8(&mut self, name: &str, dims: &[i64], v: &[u8]) -> String {
        debug_assert_eq!(v.len() as i64, dims.iter().product::<i64>());
        self.init(name, data_type::UINT8, dims, v.to_vec())
    }
    /// An int32 initializer.
    pub fn init_i32(&mut self, name: &str, dims: &[i64], v: &[i32]) -> String {
        debug_assert_eq!(v.len() as i64, dims.iter().product::<i64>());
        self.init(name, data_type::INT32, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    /// An int64 initializer.
    pub fn init_i64(&mut self, name: &str, dims: &[i64], v: &[i64]) -> String {
        debug_assert_eq!(v.len() as i64, dims.iter().product::<i64>());
        self.init(name, data_type::INT64, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    /// Declares tensor `name` (reserved with [`GraphBuilder::fresh`]) a graph input
    /// `[batch, dims...]` of element type `dtype`.
    pub fn input(&mut self, name: &str, dtype: i32, dims: &[i64], doc: &str) {
        self.inputs.push(value_info(name, dtype, dims, doc));
    }

    /// Declares tensor `name` a graph output `[batch, dims...]`.
    pub fn output(&mut self, name: &str, dtype: i32, dims: &[i64], doc: &str) {
        self.outputs.push(value_info(name, dtype, dims, doc));
    }

    /// The finished graph.
    pub fn finish(self, name: &str, doc: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: Some(name.to_string()),
            initializer: self.initializers,
            doc_string: Some(doc.to_string()),
            input: self.inputs,
            output: self.outputs,
            value_info: Vec::new(),
        }
    }
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto { name: Some(name.to_string()), ..Default::default() };
    match a {
        Attr::Int(i) => {
            p.r#type = Some(attribute_type::INT);
            p.i = Some(i);
        }
        Attr::Ints(v) => {
            p.r#type = Some(attribute_type::INTS);
            p.ints = v;
        }
        Attr::Float(f) => {
            p.r#type = Some(attribute_type::FLOAT);
            p.f = Some(f);
        }
        Attr::Str(s) => {
            p.r#type = Some(attribute_type::STRING);
            p.s = Some(s.into_bytes());
        }
    }
    p
}

/// `name: dtype[batch, dims...]`.
fn value_info(name: &str, dtype: i32, dims: &[i64], doc: &str) -> ValueInfoProto {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let mut dim = vec![Dimension { value: Some(Value::DimParam(BATCH.to_string())), denotation: None }];
    dim.extend(dims.iter().map(|&d| Dimension { value: Some(Value::DimValue(d)), denotation: None }));
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        doc_string: (!doc.is_empty()).then(|| doc.to_string()),
    }
}
