//! Model description: the graph of layers ([`graph`]) and the zoo ([`zoo`]).

pub mod graph;
pub mod import;
pub mod params;
pub mod zoo;

pub use graph::{Act, Graph, Node, Op, ResolvedNode, TokenPoolMode, INPUT};
