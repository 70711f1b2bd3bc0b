//! CPU references for `shaders/batchnorm.wgsl` and `shaders/bn_fold.wgsl` (f64, plain loops).
//! Layout NCHW with `hw = H * W` (linear layers: hw = 1).

/// `(n, c, hw)` of an NCHW activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Nchw {
    pub fn len(&self) -> usize {
        self.n * self.c * self.hw
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements per channel, `n * hw`.
    pub fn m(&self) -> usize {
        self.n * self.hw
    }
    /// Channel of flat index `i`.
    pub fn chan(&self, i: usize) -> usize {
        (i / self.hw) % self.c
    }
}

/// Batch statistics `(mean, invstd)` (biased variance) and the running-stat update
/// (`running_var` gets the unbiased variance), PyTorch semantics.
pub fn bn_stats(
    x: &[f64],
    g: Nchw,
    eps: f64,
    momentum: f64,
    running_mean: &mut [f64],
    running_var: &mut [f64],
) -> (Vec<f64>, Vec<f64>) {
    let m = g.m() as f64;
    let mut mean = vec![0.0; g.c];
    let mut var = vec![0.0; g.c];
    for (i, &v) in x.iter().enumerate() {
        mean[g.chan(i)] += v / m;
    }
    for (i, &v) in x.iter().enumerate() {
        let c = g.chan(i);
        var[c] += (v - mean[c]) * (v - mean[c]) / m;
    }
    for c in 0..g.c {
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean[c];
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * var[c] * m / (m - 1.0);
    }
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    (mean, invstd)
}

/// Eval statistics: `(running_mean, 1 / sqrt(running_var + eps))`.
pub fn bn_eval_stats(running_mean: &[f64], running_var: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    (running_mean.to_vec(), running_var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect())
}

/// `y = (x - mean) * invstd * gamma + beta`, then ReLU when `relu`.
pub fn bn_apply(x: &[f64], g: Nchw, mean: &[f64], invstd: &[f64], gamma: &[f64], beta: &[f64], relu: bool) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = g.chan(i);
            let y = (v - mean[c]) * invstd[c] * gamma[c] + beta[c];
            if relu {
                y.max(0.0)
            } else {
                y
            }
        })
        .collect()
}

/// Training-mode forward without the running-stat update (what finite differences see).
pub fn bn_train_forward(x: &[f64], g: Nchw, gamma: &[f64], beta: &[f64], eps: f64, relu: bool) -> Vec<f64> {
    let (mut rm, mut rv) = (vec![0.0; g.c], vec![1.0; g.c]);
    let (mean, invstd) = bn_stats(x, g, eps, 0.1, &mut rm, &mut rv);
    bn_apply(x, g, &mean, &invstd, gamma, beta, relu)
}

/// Backward of `bn_apply` with the given statistics: `(dx, dgamma, dbeta)`.
/// `y` (the forward output) masks `dy` by `y > 0` when the forward fused a ReLU.
/// `training`: the statistics are the batch's own (full formula); else they are constants
/// (eval / frozen), `dx = gamma * invstd * dy`.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    x: &[f64],
    g: Nchw,
    mean: &[f64],
    invstd: &[f64],
    gamma: &[f64],
    dy: &[f64],
    y_relu: Option<&[f64]>,
    training: bool,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let m = g.m() as f64;
    let gm: Vec<f64> = match y_relu {
        Some(y) => dy.iter().zip(y).map(|(&d, &yv)| if yv > 0.0 { d } else { 0.0 }).collect(),
        None => dy.to_vec(),
    };
    let xhat: Vec<f64> = x.iter().enumerate().map(|(i, &v)| (v - mean[g.chan(i)]) * invstd[g.chan(i)]).collect();
    let mut dgamma = vec![0.0; g.c];
    let mut dbeta = vec![0.0; g.c];
    for i in 0..x.len() {
        dgamma[g.chan(i)] += gm[i] * xhat[i];
        dbeta[g.chan(i)] += gm[i];
    }
    let dx = (0..x.len())
        .map(|i| {
            let c = g.chan(i);
            let k = gamma[c] * invstd[c];
            if training {
                k / m * (m * gm[i] - dbeta[c] - xhat[i] * dgamma[c])
            } else {
                k * gm[i]
            }
        })
        .collect();
    (dx, dgamma, dbeta)
}
