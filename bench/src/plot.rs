//! A log-log SVG line chart, written by hand (no plotting dependency): attach and detach
//! median time against the number of probes, one line per system.

use std::fmt::Write as _;
use std::path::Path;

use crate::{Config, Outcome};

const COLOURS: [&str; 9] = [
    "#d62728", "#ff7f0e", "#1f77b4", "#9467bd", "#e377c2", "#7f7f7f", "#2ca02c", "#8c564b",
    "#17becf",
];

struct Panel<'a> {
    title: &'a str,
    x0: f64,
}

const W: f64 = 460.0;
const H: f64 = 340.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 40.0;

/// One line: the system and its (probes, attach ms, detach ms) points.
type Series = (Config, Vec<(f64, f64, f64)>);

pub fn svg(outcomes: &[Outcome], path: &Path) {
    // Uses the warm (or only) medians.
    let mut series: Vec<Series> = Vec::new();
    for o in outcomes
        .iter()
        .filter(|o| !o.cfg.is_churn() && !o.cfg.is_tick())
    {
        let Some((a, d, _)) = o.medians(false) else {
            continue;
        };
        let pt = (o.probes as f64, a, d);
        match series.iter_mut().find(|(c, _)| *c == o.cfg) {
            Some((_, v)) => v.push(pt),
            None => series.push((o.cfg, vec![pt])),
        }
    }
    for (_, v) in &mut series {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let all = series.iter().flat_map(|(_, v)| v.iter());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, a, d) in all {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymin = ymin.min(a.min(d));
        ymax = ymax.max(a.max(d));
    }
    if series.is_empty() {
        return;
    }
    let kind = outcomes[0].kind.name();
    let (lx0, lx1) = (
        xmin.log10().floor(),
        xmax.log10().ceil().max(xmin.log10().floor() + 1.0),
    );
    let (ly0, ly1) = (
        ymin.log10().floor(),
        ymax.log10().ceil().max(ymin.log10().floor() + 1.0),
    );
    let panels = [
        Panel {
            title: "attach (median ms)",
            x0: 0.0,
        },
        Panel {
            title: "detach (median ms)",
            x0: W + 40.0,
        },
    ];
    let total_w = 2.0 * W + 40.0 + 240.0;
    let total_h = H + TOP + 60.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_w}\" height=\"{total_h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let px = |x0: f64, x: f64| x0 + LEFT + (x.log10() - lx0) / (lx1 - lx0) * (W - LEFT - 10.0);
    let py = |y: f64| TOP + H - (y.log10() - ly0) / (ly1 - ly0) * H;
    for (k, p) in panels.iter().enumerate() {
        let (xa, xb) = (p.x0 + LEFT, p.x0 + W - 10.0);
        writeln!(
            s,
            "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{} {}</text>",
            (xa + xb) / 2.0,
            kind,
            p.title
        )
        .unwrap();
        writeln!(s, "<rect x=\"{xa}\" y=\"{TOP}\" width=\"{}\" height=\"{H}\" fill=\"none\" stroke=\"#333\"/>", xb - xa).unwrap();
        let mut e = ly0;
        while e <= ly1 {
            let y = py(10f64.powf(e));
            writeln!(s, "<line x1=\"{xa}\" x2=\"{xb}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>", xa - 4.0, y + 4.0, fmt_pow(e)).unwrap();
            e += 1.0;
        }
        let mut e = lx0;
        while e <= lx1 {
            let x = px(p.x0, 10f64.powf(e));
            writeln!(s, "<line x1=\"{x}\" x2=\"{x}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>", TOP + H, TOP + H + 16.0, 10f64.powf(e)).unwrap();
            e += 1.0;
        }
        writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">probes (log)</text>",
            (xa + xb) / 2.0,
            TOP + H + 34.0
        )
        .unwrap();
        for (i, (cfg, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let dash = if cfg.is_multi() {
                ""
            } else {
                " stroke-dasharray=\"5,3\""
            };
            let coords: Vec<String> = pts
                .iter()
                .map(|&(x, a, d)| {
                    format!("{:.1},{:.1}", px(p.x0, x), py(if k == 0 { a } else { d }))
                })
                .collect();
            writeln!(s, "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>", coords.join(" ")).unwrap();
            for c in &coords {
                let (x, y) = c.split_once(',').unwrap();
                writeln!(
                    s,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{colour}\"/>"
                )
                .unwrap();
            }
        }
    }
    let lx = 2.0 * W + 60.0;
    for (i, (cfg, _)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let y = TOP + 10.0 + 20.0 * i as f64;
        let dash = if cfg.is_multi() {
            ""
        } else {
            " stroke-dasharray=\"5,3\""
        };
        writeln!(s, "<line x1=\"{lx}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{}</text>", lx + 24.0, lx + 30.0, y + 4.0, cfg.name()).unwrap();
    }
    writeln!(s, "<text x=\"{lx}\" y=\"{}\" font-size=\"10\">solid: one multi link</text><text x=\"{lx}\" y=\"{}\" font-size=\"10\">dashed: a perf event per probe</text><text x=\"{lx}\" y=\"{}\" font-size=\"10\">warm medians; bpftrace: whole</text><text x=\"{lx}\" y=\"{}\" font-size=\"10\">process (start, exit)</text>", TOP + 200.0, TOP + 214.0, TOP + 228.0, TOP + 242.0).unwrap();
    s.push_str("</svg>\n");
    std::fs::write(path, s).unwrap();
}

fn fmt_pow(e: f64) -> String {
    let v = 10f64.powf(e);
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}
