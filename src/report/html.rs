//! The report page: one self-contained HTML file (inline CSS, PNGs referenced by relative
//! path) with the accuracy table, each figure with a caption saying what it shows, per-layer
//! tables and the run's configuration.

use super::run_dir::RunData;
use super::stats::StageStats;
use std::fmt::Write;

/// The figures written next to the page (paths relative to the run directory).
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub curves: Option<String>,
    /// (stage, path) per stage with activation statistics.
    pub activations: Vec<(String, String)>,
    pub sqnr: Option<String>,
    /// (stage, path) per stage with a checkpoint.
    pub weights: Vec<(String, String)>,
}

impl Figures {
    /// Every image path, in page order.
    pub fn all(&self) -> Vec<String> {
        let mut v: Vec<String> = self.curves.iter().cloned().collect();
        v.extend(self.activations.iter().map(|(_, p)| p.clone()));
        v.extend(self.sqnr.iter().cloned());
        v.extend(self.weights.iter().map(|(_, p)| p.clone()));
        v
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn pct(v: Option<f32>) -> String {
    v.map(|a| format!("{:.2} %", a * 100.0)).unwrap_or_else(|| "&ndash;".into())
}

fn stage_title(stage: &str) -> &'static str {
    match stage {
        "ptq" => "PTQ (fp32 weights, calibrated ranges)",
        "qat" => "QAT (fine-tuned, final ranges)",
        _ => "stage",
    }
}

fn figure(out: &mut String, path: &str, alt: &str, caption: &str) {
    let _ = writeln!(
        out,
        "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{}</figcaption></figure>",
        escape(path),
        escape(alt),
        caption
    );
}

fn activation_table(out: &mut String, s: &StageStats) {
    out.push_str(
        "<table><tr><th>layer</th><th>op</th><th>bits</th><th>quantization range</th><th>observed min</th>\
         <th>observed max</th><th>clipped</th><th>SQNR</th></tr>\n",
    );
    for l in &s.layers {
        let sqnr = match l.sqnr_db() {
            Some(d) => format!("{d:.1} dB"),
            None if l.signal > 0.0 => "exact".into(),
            None => "&ndash;".into(),
        };
        match &l.act {
            Some(a) => {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>[{:.4}, {:.4}]</td><td>{:.4}</td><td>{:.4}</td>\
                     <td>{:.3} %</td><td>{sqnr}</td></tr>",
                    escape(&l.name),
                    escape(&l.op),
                    a.bits,
                    a.range[0],
                    a.range[1],
                    a.min,
                    a.max,
                    100.0 * a.clipped_fraction(l.values)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>&ndash;</td><td>(no quantizer of its own)</td><td></td><td></td>\
                     <td></td><td>{sqnr}</td></tr>",
                    escape(&l.name),
                    escape(&l.op)
                );
            }
        }
    }
    out.push_str("</table>\n");
}

/// The whole page.
pub fn page(d: &RunData, figs: &Figures) -> String {
    let m = &d.metrics;
    let mut o = String::new();
    let title = format!("wqat report: {} on {}, W{}A{}", m.model, m.dataset, m.weight_bits, m.act_bits);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1320px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}}\
         table{{border-collapse:collapse;margin:0.8em 0}}td,th{{border:1px solid #bbb;padding:3px 9px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}th{{background:#eee}}figure{{margin:1em 0}}\
         img{{max-width:100%;border:1px solid #ddd}}figcaption{{color:#444;font-size:0.95em;max-width:60em}}\
         .note{{color:#8a4b00}}pre{{background:#f6f6f6;padding:0.8em;overflow:auto;font-size:0.85em}}\
         </style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let c = &m.config;
    let _ = writeln!(
        o,
        "<p>Run directory <code>{}</code>; adapter {}; {} training and {} test images; {} steps \
         (epochs: {} fp32, {} QAT; batch {}; observer <code>{}</code>).</p>",
        escape(&d.dir.display().to_string()),
        escape(&m.adapter),
        m.train_images,
        m.test_images,
        m.steps,
        c.epochs,
        c.qat_epochs,
        c.batch,
        escape(&c.observer.to_string()),
    );
    for n in &d.notes {
        let _ = writeln!(o, "<p class=\"note\">{}</p>", escape(n));
    }

    // Accuracy table.
    o.push_str(
        "<h2>Accuracy</h2>\n<p>Top-1 accuracy after each stage: fp32 training, post-training quantization \
                (PTQ: the fp32 weights with calibrated ranges), QAT fine-tuning (fake-quant on the GPU) and the \
                converted integer model (CPU integer backend).</p>\n",
    );
    let val = m.val.as_ref();
    o.push_str("<table><tr><th>stage</th><th>test</th>");
    if let Some(v) = val {
        let _ = write!(o, "<th>validation ({} images)</th>", v.images);
    }
    o.push_str("</tr>\n");
    let rows = [
        ("fp32", m.fp32_acc, val.and_then(|v| v.fp32_acc)),
        (&*format!("PTQ W{}A{}", m.weight_bits, m.act_bits), m.ptq_acc, val.and_then(|v| v.ptq_acc)),
        (&*format!("QAT W{}A{}", m.weight_bits, m.act_bits), m.qat_acc, val.and_then(|v| v.qat_acc)),
        ("int8 model", m.int8_acc, val.and_then(|v| v.int8_acc)),
    ];
    for (name, t, v) in rows {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td>", escape(name), pct(t));
        if val.is_some() {
            let _ = write!(o, "<td>{}</td>", pct(v));
        }
        o.push_str("</tr>\n");
    }
    let _ = writeln!(
        o,
        "<tr><td>fake-quant / int8 agreement</td><td>{}</td>{}</tr>\n</table>",
        pct(m.agreement),
        if val.is_some() { "<td></td>" } else { "" }
    );

    // Curves.
    o.push_str("<h2>Training curves</h2>\n");
    if let Some(p) = &figs.curves {
        figure(
            &mut o,
            p,
            "training loss and accuracy per step",
            "Mean training loss (log scale) and training-batch accuracy over each logging window, against the \
             global step: blue the fp32 phase, orange QAT fine-tuning (which starts where fp32 ends).",
        );
    }

    // Activations.
    o.push_str(
        "<h2>Activation ranges</h2>\n<p>Sampled by the training run at the end of each stage on held-out images.</p>\n",
    );
    for (stage, p) in &figs.activations {
        let Some(s) = d.stages.iter().find(|s| &s.stage == stage) else { continue };
        let _ = writeln!(o, "<h3>{}</h3>", stage_title(stage));
        figure(
            &mut o,
            p,
            &format!("{stage} activation histograms"),
            &format!(
                "Histogram (log counts) of the values each activation quantizer sees, on {} {} images; the red \
                 lines bound the quantization range, values in the shaded region are clipped (the title gives \
                 their share).",
                s.images,
                escape(&s.split)
            ),
        );
        activation_table(&mut o, s);
    }

    // SQNR.
    o.push_str("<h2>Per-layer SQNR</h2>\n");
    if let Some(p) = &figs.sqnr {
        figure(
            &mut o,
            p,
            "per-layer SQNR",
            "Signal-to-quantization-noise ratio of each layer's fake-quant output against the fp32 forward of the \
             same weights on the same images, 10 log10(sum fp32^2 / sum (fq - fp32)^2): the error accumulated up to \
             that layer (6 dB per bit; bars at the right edge are exact).",
        );
    }

    // Weights.
    o.push_str("<h2>Weight ranges</h2>\n");
    for (stage, p) in &figs.weights {
        let _ = writeln!(o, "<h3>{}</h3>", stage_title(stage));
        figure(
            &mut o,
            p,
            &format!("{stage} per-channel weight ranges"),
            "Per output channel, the extremes of the weights the model quantizes (conv weights with batch norm \
             folded in) as blue bars, and the channel's representable range [qmin s, qmax s] between the red lines.",
        );
    }

    // Configuration.
    let cfg = serde_json::to_string_pretty(&m.config).unwrap_or_default();
    let _ = write!(
        o,
        "<h2>Configuration</h2>\n<pre>{}</pre>\n<p>Images: {}.</p>\n</body></html>\n",
        escape(&cfg),
        figs.all().iter().map(|p| format!("<code>{}</code>", escape(p))).collect::<Vec<_>>().join(", ")
    );
    o
}
