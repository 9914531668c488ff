//! The summary table: per (model, score_date), counts, nulls, moments, exact deciles, a score
//! histogram, propensity tiers and the most frequent influential factors, accumulated from the
//! kept rows while they are written (nothing is read back).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};

/// A summary group: model and score date (days since the epoch).
type Group = (String, Option<i32>);

/// The decile columns, in order (they follow `probability_stddev`).
const DECILES: [&str; 9] = [
    "score_p10",
    "score_p20",
    "score_p30",
    "score_p40",
    "score_median",
    "score_p60",
    "score_p70",
    "score_p80",
    "score_p90",
];

/// The summaries of the rows kept, accumulated as they are written: per (model, score date).
#[derive(Default)]
pub(crate) struct Groups {
    groups: HashMap<Group, Acc>,
}

/// One group's running figures.
#[derive(Default)]
struct Acc {
    rows: i64,
    identities: i64,
    score: Moments,
    probability: Moments,
    hist: [i64; 10],
    tiers: [i64; 3],
    /// Every score, for the exact deciles.
    scores: Vec<f64>,
    /// Rows per influential factor code.
    factors: hashbrown::HashMap<String, i64>,
}

/// Count, sum, min, max and the sum of squared deviations (Welford), mergeable.
#[derive(Default, Clone, Copy)]
struct Moments {
    n: i64,
    sum: f64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

/// A group's figures without its scores, as JSON (each float as its bits: exact, and NaN
/// travels too).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct GroupFigures {
    pub model: String,
    pub date: Option<i32>,
    rows: i64,
    identities: i64,
    score: (i64, [u64; 5]),
    probability: (i64, [u64; 5]),
    hist: [i64; 10],
    tiers: [i64; 3],
    factors: Vec<(String, i64)>,
}

impl Moments {
    fn to_wire(self) -> (i64, [u64; 5]) {
        let bits = [self.sum, self.mean, self.m2, self.min, self.max].map(f64::to_bits);
        (self.n, bits)
    }

    fn from_wire((n, bits): (i64, [u64; 5])) -> Self {
        let [sum, mean, m2, min, max] = bits.map(f64::from_bits);
        Moments {
            n,
            sum,
            mean,
            m2,
            min,
            max,
        }
    }

    fn add(&mut self, x: f64) {
        if self.n == 0 {
            (self.min, self.max) = (x, x);
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.n += 1;
        self.sum += x;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    fn merge(&mut self, o: &Moments) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
            return;
        }
        let n = self.n + o.n;
        let d = o.mean - self.mean;
        self.m2 += o.m2 + d * d * (self.n as f64) * (o.n as f64) / n as f64;
        self.mean += d * o.n as f64 / n as f64;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        self.n = n;
    }

    /// min, max, mean, population standard deviation; null without values.
    fn figures(&self) -> [Option<f64>; 4] {
        if self.n == 0 {
            return [None; 4];
        }
        let n = self.n as f64;
        [
            Some(self.min),
            Some(self.max),
            Some(self.sum / n),
            Some((self.m2 / n).max(0.0).sqrt()),
        ]
    }
}

impl Groups {
    /// Adds a batch of kept rows, all of `model` on score date `date`.
    pub(crate) fn add(&mut self, model: &str, date: Option<i32>, batch: &RecordBatch) {
        let acc = match self.groups.get_mut(&(model.to_string(), date)) {
            Some(a) => a,
            None => self.groups.entry((model.to_string(), date)).or_default(),
        };
        let column = |name: &str| batch.column_by_name(name);
        acc.rows += batch.num_rows() as i64;
        if let Some(id) = column("identity") {
            acc.identities += (id.len() - id.null_count()) as i64;
        }
        if let Some(p) = column("probability").and_then(|c| c.as_primitive_opt::<Float64Type>()) {
            for v in p.iter().flatten() {
                acc.probability.add(v);
            }
        }
        if let Some(scores) = column("score").and_then(|c| c.as_primitive_opt::<Float64Type>()) {
            acc.scores.reserve(scores.len() - scores.null_count());
            for s in scores.iter().flatten() {
                acc.score.add(s);
                acc.scores.push(s);
                if let Some(b) = bucket(s) {
                    acc.hist[b] += 1;
                }
                if s < 25.0 {
                    acc.tiers[0] += 1;
                } else if (25.0..75.0).contains(&s) {
                    acc.tiers[1] += 1;
                } else if s >= 75.0 {
                    acc.tiers[2] += 1;
                }
            }
        }
        if let Some(list) = column("influential_factors").and_then(|c| c.as_list_opt::<i32>()) {
            let codes = list
                .values()
                .as_struct_opt()
                .and_then(|s| s.column_by_name("code"))
                .and_then(|c| c.as_string_opt::<i32>());
            if let Some(codes) = codes {
                let offsets = list.value_offsets();
                for i in (0..list.len()).filter(|&i| list.is_valid(i)) {
                    for j in offsets[i] as usize..offsets[i + 1] as usize {
                        if codes.is_valid(j) {
                            *acc.factors.entry_ref(codes.value(j)).or_insert(0) += 1;
                        }
                    }
                }
            }
        }
    }

    /// Each group's figures as they travel from a cluster's executor, its scores apart.
    pub(crate) fn into_figures(self) -> Vec<(GroupFigures, Vec<f64>)> {
        self.groups
            .into_iter()
            .map(|((model, date), a)| {
                let figures = GroupFigures {
                    model,
                    date,
                    rows: a.rows,
                    identities: a.identities,
                    score: a.score.to_wire(),
                    probability: a.probability.to_wire(),
                    hist: a.hist,
                    tiers: a.tiers,
                    factors: a.factors.into_iter().collect(),
                };
                (figures, a.scores)
            })
            .collect()
    }

    /// Adds a group's figures from an executor (its scores come with [`Groups::add_scores`]).
    pub(crate) fn add_figures(&mut self, f: GroupFigures) {
        let acc = Acc {
            rows: f.rows,
            identities: f.identities,
            score: Moments::from_wire(f.score),
            probability: Moments::from_wire(f.probability),
            hist: f.hist,
            tiers: f.tiers,
            scores: Vec::new(),
            factors: f.factors.into_iter().collect(),
        };
        self.merge(Groups {
            groups: HashMap::from([((f.model, f.date), acc)]),
        });
    }

    /// Adds scores of a group from an executor.
    pub(crate) fn add_scores(&mut self, model: &str, date: Option<i32>, scores: &[f64]) {
        self.groups
            .entry((model.to_string(), date))
            .or_default()
            .scores
            .extend_from_slice(scores);
    }

    pub(crate) fn merge(&mut self, other: Groups) {
        for (key, o) in other.groups {
            let acc = self.groups.entry(key).or_default();
            acc.rows += o.rows;
            acc.identities += o.identities;
            acc.score.merge(&o.score);
            acc.probability.merge(&o.probability);
            for (a, b) in acc.hist.iter_mut().zip(o.hist) {
                *a += b;
            }
            for (a, b) in acc.tiers.iter_mut().zip(o.tiers) {
                *a += b;
            }
            acc.scores.extend(o.scores);
            for (code, n) in o.factors {
                *acc.factors.entry(code).or_insert(0) += n;
            }
        }
    }

    /// The summary table: one row per (model, score date), in that order (no date last), with
    /// the `top` most frequent factor codes of each (`None` when the rows carry no factor
    /// list). The deciles of the groups are computed on every core.
    pub(crate) fn finish(self, top: usize, has_factors: bool, workers: usize) -> Vec<RecordBatch> {
        let mut groups: Vec<(Group, Acc)> = self.groups.into_iter().collect();
        if groups.is_empty() {
            return Vec::new();
        }
        groups
            .sort_by(|(a, _), (b, _)| (&a.0, a.1.is_none(), a.1).cmp(&(&b.0, b.1.is_none(), b.1)));
        let mut scores: Vec<Vec<f64>> = groups
            .iter_mut()
            .map(|(_, a)| std::mem::take(&mut a.scores))
            .collect();
        let per_worker = scores.len().div_ceil(workers.clamp(1, scores.len()));
        let deciles: Vec<Option<[f64; 9]>> = std::thread::scope(|s| {
            let handles: Vec<_> = scores
                .chunks_mut(per_worker)
                .map(|chunk| {
                    s.spawn(move || chunk.iter_mut().map(|v| deciles(v)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("selecting deciles does not panic"))
                .collect()
        });
        vec![summary_batch(&groups, &deciles, top, has_factors)]
    }
}

/// The histogram bucket of a score: `[10b, 10b + 10)`, the last one closed; none outside 0–100.
fn bucket(s: f64) -> Option<usize> {
    if !(0.0..=100.0).contains(&s) {
        return None;
    }
    // The division may round across a bucket's edge: the comparisons decide.
    let mut b = ((s / 10.0) as usize).min(9);
    if s < b as f64 * 10.0 {
        b -= 1;
    } else if b < 9 && s >= (b + 1) as f64 * 10.0 {
        b += 1;
    }
    Some(b)
}

/// Exact p10 … p90 with linear interpolation (as `percentile_cont`), by selection: the
/// positions needed are found by splitting around the middle one, recursively, in linear time.
fn deciles(scores: &mut [f64]) -> Option<[f64; 9]> {
    let n = scores.len();
    if n == 0 {
        return None;
    }
    let at: [(usize, usize, f64); 9] = std::array::from_fn(|k| {
        let pos = (k + 1) as f64 / 10.0 * (n - 1) as f64;
        (pos.floor() as usize, pos.ceil() as usize, pos - pos.floor())
    });
    let mut positions: Vec<usize> = at.iter().flat_map(|&(lo, hi, _)| [lo, hi]).collect();
    positions.sort_unstable();
    positions.dedup();
    select(scores, &positions, 0);
    Some(at.map(|(lo, hi, w)| scores[lo] + (scores[hi] - scores[lo]) * w))
}

/// Puts the value of rank `p` at index `p` for each of `positions` (ranks within the whole
/// slice, `offset` being where `v` starts).
fn select(v: &mut [f64], positions: &[usize], offset: usize) {
    if positions.is_empty() {
        return;
    }
    let mid = positions.len() / 2;
    let p = positions[mid] - offset;
    v.select_nth_unstable_by(p, f64::total_cmp);
    let (left, right) = v.split_at_mut(p);
    select(left, &positions[..mid], offset);
    select(&mut right[1..], &positions[mid + 1..], offset + p + 1);
}

fn summary_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("model", DataType::Utf8, false),
        Field::new("score_date", DataType::Date32, true),
    ];
    for name in [
        "rows",
        "distinct_identities",
        "identity_nulls",
        "score_nulls",
        "probability_nulls",
    ] {
        fields.push(Field::new(name, DataType::Int64, false));
    }
    for c in ["score", "probability"] {
        for f in ["min", "max", "mean", "stddev"] {
            fields.push(Field::new(format!("{c}_{f}"), DataType::Float64, true));
        }
    }
    for name in DECILES {
        fields.push(Field::new(name, DataType::Float64, true));
    }
    for b in 0..10 {
        let (lo, hi) = (b * 10, b * 10 + 10);
        fields.push(Field::new(
            format!("hist_{lo:02}_{hi:02}"),
            DataType::Int64,
            true,
        ));
    }
    for name in ["tier_low", "tier_medium", "tier_high"] {
        fields.push(Field::new(name, DataType::Int64, true));
    }
    fields.push(Field::new("top_factors", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

fn summary_batch(
    groups: &[(Group, Acc)],
    deciles: &[Option<[f64; 9]>],
    top: usize,
    has_factors: bool,
) -> RecordBatch {
    let ints = |f: &dyn Fn(&Acc) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            groups.iter().map(|(_, a)| f(a)),
        ))
    };
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            groups.iter().map(|((m, _), _)| m),
        )),
        Arc::new(Date32Array::from_iter(groups.iter().map(|((_, d), _)| *d))),
        ints(&|a| a.rows),
        ints(&|a| a.identities),
        ints(&|a| a.rows - a.identities),
        ints(&|a| a.rows - a.score.n),
        ints(&|a| a.rows - a.probability.n),
    ];
    for moments in [|a: &Acc| a.score, |a: &Acc| a.probability] {
        for k in 0..4 {
            columns.push(Arc::new(Float64Array::from_iter(
                groups.iter().map(|(_, a)| moments(a).figures()[k]),
            )));
        }
    }
    for k in 0..9 {
        columns.push(Arc::new(Float64Array::from_iter(
            deciles.iter().map(|d| d.map(|d| d[k])),
        )));
    }
    for b in 0..10 {
        columns.push(Arc::new(Int64Array::from_iter_values(
            groups.iter().map(|(_, a)| a.hist[b]),
        )));
    }
    for t in 0..3 {
        columns.push(Arc::new(Int64Array::from_iter_values(
            groups.iter().map(|(_, a)| a.tiers[t]),
        )));
    }
    columns.push(Arc::new(StringArray::from_iter(groups.iter().map(
        |(_, a)| {
            if !has_factors || a.factors.is_empty() {
                return None;
            }
            let mut codes: Vec<(&String, &i64)> = a.factors.iter().collect();
            codes.sort_by(|x, y| y.1.cmp(x.1).then_with(|| x.0.cmp(y.0)));
            let list: Vec<String> = codes
                .into_iter()
                .take(top)
                .map(|(c, n)| format!("{c}:{n}"))
                .collect();
            Some(list.join(","))
        },
    ))));
    RecordBatch::try_new(summary_schema(), columns).expect("columns built for the schema")
}
