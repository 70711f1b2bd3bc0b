//! Host wrappers, one file per op family: each function validates shapes, fills the
//! kernel's `Params` and returns a recorded [`crate::gpu::Dispatch`].
//!
//! Shared here: the [`kernel_params!`] declaration of a kernel's uniform struct (checked
//! against the WGSL by `tests/shaders_valid.rs` through [`KERNEL_PARAMS`]), the shape checks
//! every family uses ([`same_shape`], [`expect_len`], [`expect_shape`]) and [`launch`].

use crate::error::{Result, WqatError};
use crate::gpu::{Dispatch, GpuContext, GpuTensor, PipelineKey};

/// Where a kernel's `#[repr(C)]` uniform struct puts its fields, as the host writes it
/// (made by [`kernel_params!`]); compared with the WGSL struct of each shader it fills.
#[derive(Debug, Clone, Copy)]
pub struct ParamsLayout {
    /// `module::Struct` of the Rust mirror.
    pub rust: &'static str,
    /// Stems of the shader files (`shaders/<stem>.wgsl`) whose binding-0 uniform it fills.
    pub shaders: &'static [&'static str],
    /// `size_of` the struct.
    pub size: usize,
    /// `(name, byte offset, byte size)` of every field; names starting with `_` are padding.
    pub fields: &'static [(&'static str, usize, usize)],
}

/// A kernel's uniform struct, declared with [`kernel_params!`].
pub trait KernelParams: bytemuck::Pod {
    const LAYOUT: ParamsLayout;
}

/// Declares a kernel's uniform `Params`: the `#[repr(C)]` bytemuck struct plus its
/// [`KernelParams::LAYOUT`], naming the shader files whose uniform it mirrors. Field names
/// are the WGSL member names; padding fields start with `_` (their names and split need not
/// match the WGSL's, only the offsets and sizes of the named fields and the total size).
///
/// ```ignore
/// kernel_params! {
///     #[derive(Default)]
///     pub(crate) struct Params for ["activation"] {
///         n: u32,
///         _pad: [u32; 2],
///         value: f32,
///     }
/// }
/// ```
///
/// Then list `family::Params::LAYOUT` in [`KERNEL_PARAMS`] (the struct must be visible from
/// here: `pub(crate)`).
macro_rules! kernel_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident for [$($shader:literal),+ $(,)?] {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty, )*
        }

        impl $crate::kernels::KernelParams for $name {
            const LAYOUT: $crate::kernels::ParamsLayout = $crate::kernels::ParamsLayout {
                rust: concat!(module_path!(), "::", stringify!($name)),
                shaders: &[$($shader),+],
                size: ::std::mem::size_of::<$name>(),
                fields: &[$( (stringify!($field), ::std::mem::offset_of!($name, $field), ::std::mem::size_of::<$ty>()) ),*],
            };
        }
    };
}
pub(crate) use kernel_params;

pub mod activation;
pub mod attention;
pub mod batchnorm;
pub mod bias_quant;
pub mod bn_fold;
pub mod conv;
pub mod fake_quant;
pub mod gelu;
pub mod gemm;
pub mod histogram;
pub mod layernorm;
pub mod loss;
pub mod lsq;
pub mod observer;
pub mod optim;
pub mod pool;
pub mod sequence;

/// Every kernel's uniform declaration: `tests/shaders_valid.rs` checks each against the
/// WGSL of its shaders, and that every shader with a uniform is covered. A new kernel
/// family adds its line.
pub const KERNEL_PARAMS: &[ParamsLayout] = &[
    activation::Params::LAYOUT,
    attention::Params::LAYOUT,
    batchnorm::Params::LAYOUT,
    bias_quant::Params::LAYOUT,
    bn_fold::Params::LAYOUT,
    conv::ConvParams::LAYOUT,
    fake_quant::Params::LAYOUT,
    gelu::Params::LAYOUT,
    gemm::CeilingParams::LAYOUT,
    gemm::CopyParams::LAYOUT,
    gemm::Params::LAYOUT,
    histogram::Params::LAYOUT,
    crate::infer::gpu::gemm::Params::LAYOUT,
    crate::infer::gpu::ops::Params::LAYOUT,
    layernorm::Params::LAYOUT,
    loss::Params::LAYOUT,
    lsq::Params::LAYOUT,
    observer::Params::LAYOUT,
    optim::Params::LAYOUT,
    pool::Params::LAYOUT,
    sequence::Params::LAYOUT,
];

impl ParamsLayout {
    /// Compares this layout with the binding-0 uniform struct of each of its shaders (naga
    /// reflection of the assembled source): same size, and every field not starting with
    /// `_` at the same offset with the same size on both sides. Returns every difference.
    pub fn check(&self) -> std::result::Result<(), Vec<String>> {
        let mut errors = Vec::new();
        for shader in self.shaders {
            let wgsl = match crate::gpu::uniform_layout(shader) {
                Ok(Some(w)) => w,
                Ok(None) => {
                    errors.push(format!("{}: shaders/{shader}.wgsl has no uniform at binding 0", self.rust));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", self.rust));
                    continue;
                }
            };
            let at = format!("{} vs shaders/{shader}.wgsl `{}`", self.rust, wgsl.name);
            if wgsl.size != self.size {
                errors.push(format!("{at}: size {} bytes in Rust, {} in WGSL", self.size, wgsl.size));
            }
            let named = |f: &&(&str, usize, usize)| !f.0.starts_with('_');
            for &(name, offset, size) in self.fields.iter().filter(named) {
                match wgsl.members.iter().find(|m| m.0 == name) {
                    None => errors.push(format!("{at}: field `{name}` is not a WGSL member")),
                    Some(&(_, o, s)) if (o, s) != (offset, size) => errors.push(format!(
                        "{at}: `{name}` at offset {offset} ({size} bytes) in Rust, {o} ({s} bytes) in WGSL"
                    )),
                    Some(_) => {}
                }
            }
            for (name, _, _) in wgsl.members.iter().filter(|m| !m.0.starts_with('_')) {
                if !self.fields.iter().any(|f| f.0 == name) {
                    errors.push(format!("{at}: WGSL member `{name}` has no Rust field"));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Fails unless `a` and `b` have the same shape.
pub(crate) fn same_shape(a: &GpuTensor, b: &GpuTensor, what: &str) -> Result<()> {
    if a.shape != b.shape {
        return Err(WqatError::shape(format!("{what}: shapes {:?} and {:?} differ", a.shape, b.shape)));
    }
    Ok(())
}

/// Fails unless `t` has `n` elements.
pub(crate) fn expect_len(t: &GpuTensor, n: usize, what: &str) -> Result<()> {
    if t.len() != n {
        return Err(WqatError::shape(format!("{what}: expected {n} elements, got shape {:?}", t.shape)));
    }
    Ok(())
}

/// Fails unless `t` has exactly `shape`.
pub(crate) fn expect_shape(t: &GpuTensor, shape: &[usize], what: &str) -> Result<()> {
    if t.shape != shape {
        return Err(WqatError::shape(format!("{what}: expected shape {shape:?}, got {:?}", t.shape)));
    }
    Ok(())
}

/// Records `key` with uniform `p` and the tensors bound at 1, 2, ... in order.
pub(crate) fn launch<P: KernelParams>(
    ctx: &GpuContext,
    key: &PipelineKey,
    p: &P,
    bufs: &[&GpuTensor],
    workgroups: [u32; 3],
) -> Result<Dispatch> {
    debug_assert!(P::LAYOUT.shaders.contains(&key.shader), "{} does not fill {}.wgsl", P::LAYOUT.rust, key.shader);
    let storage: Vec<&wgpu::Buffer> = bufs.iter().map(|t| &t.buffer).collect();
    Dispatch::new(ctx, key, bytemuck::bytes_of(p), &storage, workgroups)
}
