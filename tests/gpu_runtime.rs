//! The runtime itself: pipeline cache keys, tensor limits, bad shapes.

use std::sync::Arc;
use wqat::gpu::{DType, GpuTensor, PipelineKey};
use wqat::testing;
use wqat::WqatError;

#[test]
fn distinct_keys_never_share_a_pipeline() {
    let ctx = testing::ctx();
    let keys = [
        PipelineKey::new("fake_quant", "fake_quant_forward"),
        PipelineKey::new("fake_quant", "ste_backward"),
        PipelineKey::new("batchnorm", "bn_apply").with("RELU", 0.0),
        PipelineKey::new("batchnorm", "bn_apply").with("RELU", 1.0),
        PipelineKey::new("activation", "relu_forward").with("RELU6", 0.0),
        PipelineKey::new("activation", "relu_forward").with("RELU6", 1.0),
    ];
    let pipes: Vec<_> = keys.iter().map(|k| ctx.pipeline(k).unwrap()).collect();
    for i in 0..pipes.len() {
        for j in 0..pipes.len() {
            assert_eq!(Arc::ptr_eq(&pipes[i], &pipes[j]), i == j, "{:?} vs {:?}", keys[i], keys[j]);
        }
    }
    // The same key again is the cached pipeline.
    let before = ctx.pipeline_count();
    let again = ctx.pipeline(&keys[3]).unwrap();
    assert!(Arc::ptr_eq(&again, &pipes[3]));
    assert_eq!(ctx.pipeline_count(), before);
}

#[test]
fn unknown_shader_or_entry_is_an_error() {
    let ctx = testing::ctx();
    assert!(ctx.pipeline(&PipelineKey::new("no_such_shader", "main")).is_err());
    assert!(ctx.pipeline(&PipelineKey::new("fake_quant", "no_such_entry")).is_err());
}

#[test]
fn zero_size_and_oversized_tensors_are_typed_errors() {
    let ctx = testing::ctx();
    assert!(matches!(GpuTensor::zeros(&ctx, &[0, 4], DType::F32), Err(WqatError::Shape(_))));
    let huge = (ctx.limits.max_buffer_size / 4 + 1) as usize;
    assert!(matches!(GpuTensor::zeros(&ctx, &[huge], DType::F32), Err(WqatError::Limit(_))));
    assert!(matches!(GpuTensor::from_f32(&ctx, &[3], &[1.0, 2.0]), Err(WqatError::Shape(_))));
}
