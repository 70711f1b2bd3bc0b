//! Model description: the graph of layers ([`graph`]), the zoo ([`zoo`]), parameter names
//! ([`params`]) and checkpoint reading with BN folding ([`checkpoint`]).

pub mod checkpoint;
pub mod graph;
pub mod import;
pub mod params;
pub mod zoo;

pub use graph::{Act, Graph, Node, Op, ResolvedNode, TokenPoolMode, INPUT};
