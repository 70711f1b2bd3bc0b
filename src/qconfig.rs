//! QConfig: how a model is quantized, PyTorch-style, with per-layer overrides.
//!
//! A [`QConfig`] holds the model-wide defaults (weight spec, activation spec, activation
//! observer) and an ordered list of [`LayerQConfig`] overrides, each selecting layers by
//! name (exact, or a `*` wildcard pattern such as `layer3.*`). For a quantizer the
//! effective setting is the default with every matching override applied in order (later
//! ones win). The quantizer of a node's weights reads the node's weight settings, the
//! quantizer of a node's output (conv/linear after BN and activation, add) reads the node's
//! activation settings, and the image's quantizer belongs to the pseudo-layer `input`.
//! Pools and flatten carry their input's quantizer, so they take no settings.
//!
//! The whole QConfig (overrides included) is stored as JSON in the `qconfig` metadata of
//! checkpoints and int8 models; the GPU engine, the CPU reference graph and the int8
//! converter all resolve quantizers through [`QConfig::spec`], so they cannot disagree.

use crate::error::{Result, WqatError};
use crate::model::graph::{Graph, ResolvedNode, INPUT};
use crate::model::params::{has_weights, QuantizerRole, QuantizerSpec};
use crate::quant::QuantSpec;
use crate::tensorfile::TensorFile;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How an activation quantizer picks its range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObserverKind {
    /// Running min/max over every batch seen.
    MinMax,
    /// Exponential moving average of batch min/max: `r += c * (batch - r)`.
    MovingAverage { c: f32 },
    /// PyTorch-style histogram observer (L2-minimizing range).
    Histogram { bins: u32 },
    /// Histogram observer (2048 bins) whose range keeps the central `percentile` % of the
    /// observed values: the upper end is the upper edge of the first bin where the cumulative
    /// count reaches `percentile` % of the total, the lower end the lower edge of the last bin
    /// where the count from the top does (see `reference::histogram::percentile_range`).
    Percentile { percentile: f32 },
    /// Histogram observer (2048 bins) whose range minimizes the expected quantization MSE
    /// over the histogram, searched on a grid of clipping thresholds (the observed range
    /// scaled toward 0 by `k / 128`, k = 1..=128; see `reference::histogram::mse_range`).
    Mse,
}

impl Default for ObserverKind {
    /// Moving-average min/max with `c = 0.01` (PyTorch's QAT default).
    fn default() -> Self {
        ObserverKind::MovingAverage { c: 0.01 }
    }
}

impl ObserverKind {
    /// Default percentile of `percentile` without an argument.
    pub const DEFAULT_PERCENTILE: f32 = 99.99;

    /// Parses `minmax`, `ema` / `ema:0.01`, `histogram` / `histogram:2048`, `percentile` /
    /// `percentile:99.99`, `mse`.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, arg) = s.split_once(':').map(|(a, b)| (a, Some(b))).unwrap_or((s, None));
        let bad = || {
            WqatError::invalid(format!(
                "observer {s:?}: use minmax, ema[:C], histogram[:BINS], percentile[:P] (50 < P <= 100) or mse"
            ))
        };
        let k = match name {
            "minmax" => ObserverKind::MinMax,
            "ema" => ObserverKind::MovingAverage {
                c: arg.map(|a| a.parse().map_err(|_| bad())).transpose()?.unwrap_or(0.01),
            },
            "histogram" => {
                ObserverKind::Histogram { bins: arg.map(|a| a.parse().map_err(|_| bad())).transpose()?.unwrap_or(2048) }
            }
            "percentile" => ObserverKind::Percentile {
                percentile: arg.map(|a| a.parse().map_err(|_| bad())).transpose()?.unwrap_or(Self::DEFAULT_PERCENTILE),
            },
            "mse" if arg.is_none() => ObserverKind::Mse,
            _ => return Err(bad()),
        };
        k.validate()?;
        Ok(k)
    }
    /// Checks the averaging constant (0 < c <= 1), the bin count (16..=65536) and the
    /// percentile (50 < p <= 100).
    pub fn validate(&self) -> Result<()> {
        match *self {
            ObserverKind::MinMax | ObserverKind::Mse => Ok(()),
            ObserverKind::Percentile { percentile } if percentile > 50.0 && percentile <= 100.0 => Ok(()),
            ObserverKind::Percentile { percentile } => Err(WqatError::invalid(format!(
                "percentile observer: {percentile} must be in (50, 100] (the percent of values kept, e.g. 99.99)"
            ))),
            ObserverKind::MovingAverage { c } if c > 0.0 && c <= 1.0 => Ok(()),
            ObserverKind::MovingAverage { c } => {
                Err(WqatError::invalid(format!("EMA observer constant {c} must be in (0, 1]")))
            }
            ObserverKind::Histogram { bins } if (16..=65536).contains(&bins) => Ok(()),
            ObserverKind::Histogram { bins } => {
                Err(WqatError::invalid(format!("histogram observer needs 16..=65536 bins, got {bins}")))
            }
        }
    }
}

/// Settings for the layers whose name matches `pattern`; `None` keeps what applies so far.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LayerQConfig {
    /// A node name (`conv1`, `layer1.0.conv2`, `input` for the image) or a pattern with `*`
    /// wildcards (`layer3.*`, `*.conv1`).
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_bits: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act_bits: Option<u32>,
    /// Per-output-channel (true) or per-tensor (false) weight scales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_per_channel: Option<bool>,
    /// Full signed weight range `[-2^(b-1), 2^(b-1)-1]` (true) or the restricted one (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_full_range: Option<bool>,
    /// Observer of the layer's output quantizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<ObserverKind>,
    /// Keep the layer's weights in fp32 (no weight quantizer; see `Node::fp32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp32: Option<bool>,
    /// Attention layers: fake-quantize the matmul inputs (q, k, v, softmax output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize_matmul: Option<bool>,
}

impl LayerQConfig {
    /// Parses `PATTERN=SETTING[,SETTING...]` with settings `wN` (weight bits), `aN`
    /// (activation bits), `per-channel`, `per-tensor`, `full-range` / `narrow-range` (weight
    /// code range, see [`QuantSpec::full_range`]), `fp32`, `int` (undo `fp32`) and
    /// `observer=KIND` (see [`ObserverKind::parse`]). Example: `conv1=w8,a8`,
    /// `layer3.*=w4,observer=histogram`.
    pub fn parse(s: &str) -> Result<LayerQConfig> {
        let bad = |why: &str| {
            WqatError::invalid(format!(
                "layer qconfig {s:?}: {why} (use PATTERN=SETTING,..., settings wN, aN, per-channel, \
                 per-tensor, full-range, narrow-range, fp32, int, matmul, no-matmul, observer=KIND; e.g. conv1=w8,a8)"
            ))
        };
        let (pattern, rest) = s.split_once('=').ok_or_else(|| bad("missing `=`"))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(bad("empty layer pattern"));
        }
        let mut l = LayerQConfig { pattern: pattern.to_string(), ..Default::default() };
        for tok in rest.split(',').map(str::trim) {
            let bits = |t: &str| -> Result<u32> {
                let b: u32 = t.parse().map_err(|_| bad(&format!("bad bit width in {tok:?}")))?;
                if !(2..=8).contains(&b) {
                    return Err(bad(&format!("bit width {b} is outside 2..=8")));
                }
                Ok(b)
            };
            match tok {
                "" => return Err(bad("empty setting")),
                "per-channel" => l.weight_per_channel = Some(true),
                "per-tensor" => l.weight_per_channel = Some(false),
                "full-range" => l.weight_full_range = Some(true),
                "narrow-range" => l.weight_full_range = Some(false),
                "fp32" => l.fp32 = Some(true),
                "int" => l.fp32 = Some(false),
                "matmul" => l.quantize_matmul = Some(true),
                "no-matmul" => l.quantize_matmul = Some(false),
                t if t.starts_with("observer=") => l.observer = Some(ObserverKind::parse(&t["observer=".len()..])?),
                t if t.starts_with('w') => l.weight_bits = Some(bits(&t[1..])?),
                t if t.starts_with('a') => l.act_bits = Some(bits(&t[1..])?),
                _ => return Err(bad(&format!("unknown setting {tok:?}"))),
            }
        }
        Ok(l)
    }

    /// Whether the pattern selects the layer called `name`.
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(self.pattern.as_bytes(), name.as_bytes())
    }
}

impl std::fmt::Display for ObserverKind {
    /// The `--observer` syntax ([`ObserverKind::parse`] reads it back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObserverKind::MinMax => write!(f, "minmax"),
            ObserverKind::MovingAverage { c } => write!(f, "ema:{c}"),
            ObserverKind::Histogram { bins } => write!(f, "histogram:{bins}"),
            ObserverKind::Percentile { percentile } => write!(f, "percentile:{percentile}"),
            ObserverKind::Mse => write!(f, "mse"),
        }
    }
}

impl std::fmt::Display for LayerQConfig {
    /// The `--layer-qconfig` syntax ([`LayerQConfig::parse`] reads it back).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = self.weight_bits {
            parts.push(format!("w{b}"));
        }
        if let Some(b) = self.act_bits {
            parts.push(format!("a{b}"));
        }
        if let Some(pc) = self.weight_per_channel {
            parts.push(if pc { "per-channel" } else { "per-tensor" }.to_string());
        }
        if let Some(fr) = self.weight_full_range {
            parts.push(if fr { "full-range" } else { "narrow-range" }.to_string());
        }
        if let Some(fp) = self.fp32 {
            parts.push(if fp { "fp32" } else { "int" }.to_string());
        }
        if let Some(m) = self.quantize_matmul {
            parts.push(if m { "matmul" } else { "no-matmul" }.to_string());
        }
        if let Some(o) = self.observer {
            parts.push(format!("observer={o}"));
        }
        write!(f, "{}={}", self.pattern, parts.join(","))
    }
}

/// `*` matches any run of characters (including `.`); everything else matches itself.
fn wildcard_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with one backtrack point (the last `*`), linear in practice.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Model-wide quantization settings (PyTorch's QConfig) plus per-layer overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QConfig {
    /// Weights: symmetric per output channel by default.
    pub weight: QuantSpec,
    /// Activations: affine per tensor by default.
    pub activation: QuantSpec,
    /// Activation observer (weights always observe their current range).
    #[serde(default)]
    pub observer: ObserverKind,
    /// Per-layer overrides, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerQConfig>,
}

impl QConfig {
    /// `weight_bits`/`act_bits` with the defaults (per-channel symmetric weights, affine
    /// unsigned per-tensor activations, moving-average min/max with c = 0.01).
    pub fn new(weight_bits: u32, act_bits: u32) -> Result<QConfig> {
        let q = QConfig {
            weight: QuantSpec::weight(weight_bits),
            activation: QuantSpec::activation(act_bits),
            observer: ObserverKind::default(),
            layers: Vec::new(),
        };
        q.validate()?;
        Ok(q)
    }

    /// Adds an override (applied after the ones already present).
    pub fn with_layer(mut self, l: LayerQConfig) -> Result<QConfig> {
        self.layers.push(l);
        self.validate()?;
        Ok(self)
    }

    fn matching<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a LayerQConfig> + 'a {
        self.layers.iter().filter(move |l| l.matches(name))
    }

    /// The weight spec of layer `name`.
    pub fn weight_spec(&self, name: &str) -> QuantSpec {
        let mut s = self.weight;
        for l in self.matching(name) {
            if let Some(b) = l.weight_bits {
                s.bits = b;
            }
            if let Some(pc) = l.weight_per_channel {
                s.channel_axis = pc.then_some(0);
            }
            if let Some(fr) = l.weight_full_range {
                s.full_range = fr;
            }
        }
        s
    }

    /// The spec of layer `name`'s output quantizer (`input`: the image's).
    pub fn activation_spec(&self, name: &str) -> QuantSpec {
        let mut s = self.activation;
        for l in self.matching(name) {
            if let Some(b) = l.act_bits {
                s.bits = b;
            }
        }
        s
    }

    /// The observer of layer `name`'s output quantizer.
    pub fn observer_for(&self, name: &str) -> ObserverKind {
        self.matching(name).filter_map(|l| l.observer).last().unwrap_or(self.observer)
    }

    /// Whether an override keeps layer `name` in fp32 (`None`: no override says).
    pub fn fp32_for(&self, name: &str) -> Option<bool> {
        self.matching(name).filter_map(|l| l.fp32).last()
    }

    /// The layer name a quantizer's settings come from.
    pub fn layer_of(nodes: &[ResolvedNode], role: QuantizerRole) -> &str {
        match role {
            QuantizerRole::Output(INPUT) => "input",
            QuantizerRole::Weight(i) | QuantizerRole::Output(i) | QuantizerRole::Probs(i) => &nodes[i].node.name,
        }
    }

    /// The spec of the quantizer in `role`.
    pub fn spec(&self, nodes: &[ResolvedNode], role: QuantizerRole) -> QuantSpec {
        let name = Self::layer_of(nodes, role);
        match role {
            QuantizerRole::Weight(_) => self.weight_spec(name),
            QuantizerRole::Output(_) | QuantizerRole::Probs(_) => self.activation_spec(name),
        }
    }

    /// The spec of a quantizer whose stored state has `channels` channels: a weight
    /// quantizer's granularity follows the state (1 channel: per tensor), so a checkpoint's
    /// states decide even where they were built under other settings.
    pub fn spec_for_state(&self, nodes: &[ResolvedNode], role: QuantizerRole, channels: usize) -> QuantSpec {
        let mut spec = self.spec(nodes, role);
        if let QuantizerRole::Weight(_) = role {
            spec.channel_axis = (channels > 1).then_some(0);
        }
        spec
    }

    /// Every quantizer of `graph` with this QConfig's weight granularity per layer.
    pub fn quantizer_specs(&self, graph: &Graph) -> Result<Vec<QuantizerSpec>> {
        crate::model::params::quantizer_specs(graph, |n| self.weight_spec(n).channel_axis.is_some())
    }

    /// Checks the defaults and every override (bit widths, observer constants).
    pub fn validate(&self) -> Result<()> {
        self.weight.validate()?;
        self.activation.validate()?;
        self.observer.validate()?;
        for l in &self.layers {
            let ctx = |e: WqatError| WqatError::invalid(format!("layer qconfig {:?}: {e}", l.pattern));
            if l.pattern.is_empty() {
                return Err(WqatError::invalid("layer qconfig with an empty pattern"));
            }
            for b in [l.weight_bits, l.act_bits].into_iter().flatten() {
                QuantSpec { bits: b, ..self.weight }.validate().map_err(ctx)?;
            }
            if let Some(o) = l.observer {
                o.validate().map_err(ctx)?;
            }
        }
        Ok(())
    }

    /// Checks that every override selects at least one layer of `graph` (a typo would
    /// otherwise silently quantize the layer with the defaults).
    pub fn check_layers(&self, graph: &Graph) -> Result<()> {
        let nodes = graph.resolve()?;
        for l in &self.layers {
            let hit = l.matches("input") || nodes.iter().any(|r| l.matches(&r.node.name));
            if !hit {
                let names: Vec<&str> =
                    nodes.iter().filter(|r| has_weights(&r.node.op)).map(|r| r.node.name.as_str()).collect();
                return Err(WqatError::invalid(format!(
                    "layer qconfig {:?} matches no layer of model {} (the image is `input`; layers with weights: {})",
                    l.pattern,
                    graph.name,
                    names.join(", ")
                )));
            }
            // A setting named for exactly one transformer node that it cannot apply to is an
            // error, never a silent fp32 (wildcards like `blocks.*` select the linears).
            for (i, r) in nodes.iter().enumerate().filter(|(_, r)| r.node.name == l.pattern) {
                if !crate::model::params::is_sequence_node(r) {
                    continue;
                }
                let sets_weights = l.weight_bits.is_some()
                    || l.weight_per_channel.is_some()
                    || l.weight_full_range.is_some()
                    || l.fp32 == Some(false);
                let embedding = matches!(r.node.op, crate::model::Op::Embedding { .. });
                if sets_weights && embedding && self.fp32_for(&r.node.name) != Some(false) {
                    return Err(WqatError::invalid(format!(
                        "layer qconfig {:?}: embedding {} stays fp32 unless a setting says `int` (e.g. `{}=int,w8`)",
                        l.pattern, r.node.name, r.node.name
                    )));
                }
                if sets_weights && !has_weights(&r.node.op) && !embedding {
                    return Err(WqatError::invalid(format!(
                        "layer qconfig {:?}: layer {} has no quantized weights (the BERT recipe keeps positions and LayerNorm in fp32; an embedding table is quantized with `int`)",
                        l.pattern, r.node.name
                    )));
                }
                if l.quantize_matmul.is_some() && !matches!(r.node.op, crate::model::Op::Attention { .. }) {
                    return Err(WqatError::invalid(format!(
                        "layer qconfig {:?}: `matmul` applies to attention layers, {} is not one",
                        l.pattern, r.node.name
                    )));
                }
                let sets_act = l.act_bits.is_some() || l.observer.is_some();
                if sets_act && !crate::model::params::has_output_quant(&nodes, i) {
                    return Err(WqatError::invalid(format!(
                        "layer qconfig {:?}: the output of layer {} is not quantized (only tensors a quantized                          linear reads are: residual sums, softmax and GELU stay fp32; the attention matmul inputs with
                         the `matmul` setting of the attention layer)",
                        l.pattern, r.node.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Applies the overrides' `fp32` settings to the graph's conv/linear nodes and their
    /// `matmul` settings to its attention nodes (both change where quantizers sit).
    pub fn apply_fp32(&self, graph: &mut Graph) {
        for n in &mut graph.nodes {
            if let Some(f) = self.fp32_for(&n.name) {
                n.fp32 = f;
            }
            if let crate::model::Op::Attention { quantize_matmul, .. } = &mut n.op {
                if let Some(m) = self.matching(&n.name).filter_map(|l| l.quantize_matmul).last() {
                    *quantize_matmul = m;
                }
            }
            // Embedding tables stay fp32 unless an override says `int`.
            if let crate::model::Op::Embedding { quantize_weight, .. } = &mut n.op {
                if let Some(f) = self.fp32_for(&n.name) {
                    *quantize_weight = !f;
                }
            }
        }
    }

    /// Parses and checks the `qconfig` metadata of a checkpoint or int8 model.
    pub fn from_metadata(file: &TensorFile, path: &Path) -> Result<QConfig> {
        let text = file.metadata.get("qconfig").ok_or_else(|| WqatError::format(path, "missing metadata `qconfig`"))?;
        let q: QConfig =
            serde_json::from_str(text).map_err(|e| WqatError::format(path, format!("metadata `qconfig`: {e}")))?;
        q.validate().map_err(|e| WqatError::format(path, format!("metadata `qconfig`: {e}")))?;
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::zoo;

    #[test]
    fn wildcards() {
        for (p, s, m) in [
            ("conv1", "conv1", true),
            ("conv1", "conv10", false),
            ("layer3.*", "layer3.0.conv1", true),
            ("layer3.*", "layer30.conv1", false),
            ("*.conv1", "layer1.2.conv1", true),
            ("*", "anything", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("", "", true),
        ] {
            assert_eq!(wildcard_match(p.as_bytes(), s.as_bytes()), m, "{p} vs {s}");
        }
    }

    #[test]
    fn parse_and_resolve() {
        let q = QConfig::new(4, 4)
            .unwrap()
            .with_layer(LayerQConfig::parse("conv1=w8,a8,observer=histogram:256").unwrap())
            .unwrap()
            .with_layer(LayerQConfig::parse("fc*=per-tensor,full-range").unwrap())
            .unwrap()
            .with_layer(LayerQConfig::parse("fc2=fp32").unwrap())
            .unwrap();
        assert_eq!(q.weight_spec("conv1").bits, 8);
        assert_eq!(q.activation_spec("conv1").bits, 8);
        assert_eq!(q.activation_spec("conv2").bits, 4);
        assert_eq!(q.observer_for("conv1"), ObserverKind::Histogram { bins: 256 });
        assert_eq!(q.observer_for("conv2"), ObserverKind::default());
        assert_eq!(q.weight_spec("fc1").channel_axis, None);
        assert_eq!(q.weight_spec("conv2").channel_axis, Some(0));
        assert!(q.weight_spec("fc1").full_range && !q.weight_spec("conv2").full_range);
        assert_eq!((q.weight_spec("fc1").qmin(), q.weight_spec("fc1").qmax()), (-8, 7));
        assert_eq!(q.fp32_for("fc2"), Some(true));
        assert_eq!(q.fp32_for("fc1"), None);
        for l in &q.layers {
            assert_eq!(&LayerQConfig::parse(&l.to_string()).unwrap(), l, "{l}");
        }
        let text = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<QConfig>(&text).unwrap(), q);
        // Old checkpoints store no observer and no layers.
        let old = r#"{"weight":{"bits":8,"signed":true,"symmetric":true,"channel_axis":0},
                      "activation":{"bits":8,"signed":false,"symmetric":false,"channel_axis":null}}"#;
        assert_eq!(serde_json::from_str::<QConfig>(old).unwrap(), QConfig::new(8, 8).unwrap());
        let g = zoo::build("mnist-cnn", [1, 28, 28], 10).unwrap();
        q.check_layers(&g).unwrap();
        let typo = QConfig::new(8, 8).unwrap().with_layer(LayerQConfig::parse("conv9=w4").unwrap()).unwrap();
        let e = typo.check_layers(&g).unwrap_err().to_string();
        assert!(e.contains("conv9") && e.contains("conv1, conv2"), "{e}");
        let mut g2 = g.clone();
        q.apply_fp32(&mut g2);
        assert!(g2.nodes.iter().find(|n| n.name == "fc2").unwrap().fp32);
    }

    #[test]
    fn parse_errors() {
        for s in ["conv1", "=w8", "conv1=", "conv1=w9", "conv1=a1", "conv1=wx", "conv1=bogus", "conv1=observer=x"] {
            assert!(LayerQConfig::parse(s).is_err(), "{s}");
        }
        assert!(ObserverKind::parse("ema:0").is_err());
        assert!(ObserverKind::parse("histogram:3").is_err());
        for bad in ["percentile:120", "percentile:50", "percentile:0", "percentile:x", "percentile:nan", "mse:3"] {
            let e = ObserverKind::parse(bad).unwrap_err().to_string();
            assert!(e.contains("percentile") || e.contains("mse"), "{bad}: {e}");
        }
        assert!(LayerQConfig::parse("conv1=observer=percentile:120").is_err());
    }

    #[test]
    fn percentile_and_mse_round_trip() {
        for (text, kind) in [
            ("percentile:99.99", ObserverKind::Percentile { percentile: 99.99 }),
            ("percentile", ObserverKind::Percentile { percentile: 99.99 }),
            ("percentile:100", ObserverKind::Percentile { percentile: 100.0 }),
            ("percentile:99.9", ObserverKind::Percentile { percentile: 99.9 }),
            ("mse", ObserverKind::Mse),
        ] {
            let k = ObserverKind::parse(text).unwrap();
            assert_eq!(k, kind, "{text}");
            assert_eq!(ObserverKind::parse(&k.to_string()).unwrap(), k, "{k}");
        }
        let l = LayerQConfig::parse("layer3.*=a4,observer=percentile:99.9").unwrap();
        assert_eq!(l.observer, Some(ObserverKind::Percentile { percentile: 99.9 }));
        assert_eq!(LayerQConfig::parse(&l.to_string()).unwrap(), l);
        let mut q = QConfig::new(8, 8)
            .unwrap()
            .with_layer(l)
            .unwrap()
            .with_layer(LayerQConfig::parse("conv1=observer=mse").unwrap())
            .unwrap();
        q.observer = ObserverKind::Mse;
        assert_eq!(q.observer_for("layer3.0.conv1"), ObserverKind::Percentile { percentile: 99.9 });
        assert_eq!(q.observer_for("conv1"), ObserverKind::Mse);
        // The checkpoint metadata (JSON) round trip.
        let text = serde_json::to_string(&q).unwrap();
        assert!(
            text.contains(r#""kind":"percentile","percentile":99.9"#) && text.contains(r#""kind":"mse""#),
            "{text}"
        );
        let back: QConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, q);
        back.validate().unwrap();
        // A stored out-of-range percentile is rejected on load.
        let bad = text.replace("99.9", "120");
        let q2: QConfig = serde_json::from_str(&bad).unwrap();
        assert!(q2.validate().is_err());
    }

    #[test]
    fn attention_matmul_setting() {
        let l = LayerQConfig::parse("blocks.*.attn.core=matmul,a6").unwrap();
        assert_eq!((l.quantize_matmul, l.act_bits), (Some(true), Some(6)));
        assert_eq!(LayerQConfig::parse(&l.to_string()).unwrap(), l);
        let g = zoo::build("text-tiny", [1, 1, 8], 3).unwrap();
        let q = QConfig::new(8, 8).unwrap().with_layer(l).unwrap();
        q.check_layers(&g).unwrap();
        let mut g2 = g.clone();
        q.apply_fp32(&mut g2);
        assert!(g2.nodes.iter().any(|n| matches!(n.op, crate::model::Op::Attention { quantize_matmul: true, .. })));
        // `matmul` named for a layer that is not an attention, weight bits on a LayerNorm and
        // activation bits on a residual sum are errors.
        for bad in ["blocks.0.norm1=matmul", "blocks.0.norm1=w4", "blocks.0.add1=a4", "embed_tokens=w8"] {
            let q = QConfig::new(8, 8).unwrap().with_layer(LayerQConfig::parse(bad).unwrap()).unwrap();
            assert!(q.check_layers(&g).is_err(), "{bad}");
        }
        // An embedding table is quantized with `int`.
        let q = QConfig::new(8, 8).unwrap().with_layer(LayerQConfig::parse("embed_tokens=int,w4").unwrap()).unwrap();
        q.check_layers(&g).unwrap();
        let mut g3 = g.clone();
        q.apply_fp32(&mut g3);
        assert!(matches!(g3.nodes[0].op, crate::model::Op::Embedding { quantize_weight: true, .. }));
        assert!(q.quantizer_specs(&g3).unwrap().iter().any(|s| s.name == "embed_tokens.weight_quant"));
    }
}
