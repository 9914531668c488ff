//! Dedupe: which flat row of each (identity, model) is kept, decided on narrow keys before any
//! payload is read (late materialisation).
//!
//! The row kept is the one with the newest score date, then the newest batch (creation time,
//! then the largest id), then the smallest record id (nulls last). The first pass reads, of
//! every input, only the identity and each model's presence and score date, and keeps per
//! (identity, model) the best (score date, batch) seen with its locator (input, row). The table
//! is a hash table of identities, sharded by hash so that both workers insert at once. Rows
//! tied on (score date, batch) are set aside; only their record ids are read afterwards, and
//! only from the inputs that have ties. The result is a bitmap per input of the (row, model)
//! pairs to keep, which the write pass (`scores.rs`) applies as it reads each input once.
//!
//! Under a memory limit the table takes at most half of it: when the estimated table is larger,
//! the shards are built a range at a time, each range reading the key columns again.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Instant;

use datafusion::arrow::array::{Array, StringArray};
use hashbrown::HashTable;
use hashbrown::hash_map::HashMap;

use crate::error::TransformError;
use crate::scores::Plan;
use crate::workers::on_workers;

/// One flat row's key: its row in the chunk, model, batch rank and score date (`i32::MIN` for
/// none: older than any date).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyRow {
    pub row: u32,
    pub model: u16,
    pub rank: u16,
    pub date: i32,
}

/// Which (row, model) pairs of each input are kept.
pub(crate) struct Winners {
    bits: Vec<Vec<u64>>,
    models: usize,
    /// How many ranges of identities the table was built in (1 unless memory was short).
    pub passes: usize,
}

impl Winners {
    pub(crate) fn get(&self, input: usize, row: u64, model: usize) -> bool {
        let b = row as usize * self.models + model;
        self.bits[input]
            .get(b / 64)
            .is_some_and(|w| (w >> (b % 64)) & 1 == 1)
    }

    fn set(&mut self, loc: u64, model: usize) {
        let b = row_of(loc) as usize * self.models + model;
        self.bits[input_of(loc)][b / 64] |= 1 << (b % 64);
    }
}

const SHARDS: usize = 256;
/// Bytes of table per input row besides its identity: hash, arena end, table slot and a
/// share of ties; and per model, a candidate. The shards are sized for these up front.
const BYTES_PER_ROW: usize = 8 + 8 + 6 + 8;
const BYTES_PER_MODEL: usize = 16;
const NONE: u64 = u64::MAX;
const ROW_BITS: u32 = 40;

fn loc(input: usize, row: u64) -> u64 {
    ((input as u64) << ROW_BITS) | row
}

fn input_of(loc: u64) -> usize {
    (loc >> ROW_BITS) as usize
}

fn row_of(loc: u64) -> u64 {
    loc & ((1 << ROW_BITS) - 1)
}

/// The best row seen of one (identity, model).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    date: i32,
    rank: u16,
    /// Other rows have the same (date, rank): the record ids decide, see [`Shard::ties`].
    tied: bool,
    loc: u64,
}

const EMPTY: Candidate = Candidate {
    date: 0,
    rank: 0,
    tied: false,
    loc: NONE,
};

/// A row tied with the best of its slot when it was seen.
#[derive(Debug, Clone, Copy)]
struct Tie {
    slot: u32,
    date: i32,
    rank: u16,
    loc: u64,
}

/// The identities of one hash range: group `g`'s identity is `arena[ends[g-1]..ends[g]]`, its
/// candidates `candidates[g * models..][..models]`.
struct Shard {
    table: HashTable<u32>,
    hashes: Vec<u64>,
    ends: Vec<usize>,
    arena: Vec<u8>,
    candidates: Vec<Candidate>,
    ties: Vec<Tie>,
}

impl Shard {
    /// A shard sized for `groups` identities of `arena` bytes in all: its vectors never grow
    /// by doubling (which would hold up to twice the memory, and copy it).
    fn with_capacity(groups: usize, arena: usize, models: usize) -> Self {
        Shard {
            table: HashTable::with_capacity(groups),
            hashes: Vec::with_capacity(groups),
            ends: Vec::with_capacity(groups),
            arena: Vec::with_capacity(arena),
            candidates: Vec::with_capacity(groups * models),
            ties: Vec::new(),
        }
    }

    fn insert(&mut self, hash: u64, id: &[u8], models: usize, key: &KeyRow, at: u64) {
        let Shard {
            table,
            hashes,
            ends,
            arena,
            candidates,
            ties,
        } = self;
        let bytes = |g: usize| &arena[if g == 0 { 0 } else { ends[g - 1] }..ends[g]];
        let found = table
            .find(hash, |&g| {
                hashes[g as usize] == hash && bytes(g as usize) == id
            })
            .copied();
        let g = match found {
            Some(g) => g as usize,
            None => {
                let g = hashes.len();
                hashes.push(hash);
                arena.extend_from_slice(id);
                ends.push(arena.len());
                candidates.extend(std::iter::repeat_n(EMPTY, models));
                table.insert_unique(hash, g as u32, |&g| hashes[g as usize]);
                g
            }
        };
        let slot = g * models + key.model as usize;
        let best = &mut candidates[slot];
        let new = Candidate {
            date: key.date,
            rank: key.rank,
            tied: false,
            loc: at,
        };
        if best.loc == NONE {
            *best = new;
            return;
        }
        match (key.date, key.rank).cmp(&(best.date, best.rank)) {
            std::cmp::Ordering::Greater => *best = new,
            std::cmp::Ordering::Less => {}
            std::cmp::Ordering::Equal => {
                if !best.tied {
                    ties.push(Tie {
                        slot: slot as u32,
                        date: best.date,
                        rank: best.rank,
                        loc: best.loc,
                    });
                    best.tied = true;
                }
                ties.push(Tie {
                    slot: slot as u32,
                    date: key.date,
                    rank: key.rank,
                    loc: at,
                });
            }
        }
    }

    fn bytes(&self) -> usize {
        self.table.capacity() * 5
            + self.hashes.capacity() * 8
            + self.ends.capacity() * 8
            + self.arena.capacity()
            + self.candidates.capacity() * std::mem::size_of::<Candidate>()
            + self.ties.capacity() * std::mem::size_of::<Tie>()
    }
}

/// How many ranges of shards the table is built in, so that one range fits in `budget`.
fn ranges(plan: &Plan, budget: Option<usize>) -> usize {
    let Some(budget) = budget else {
        return 1;
    };
    let per_row = BYTES_PER_ROW + BYTES_PER_MODEL * plan.models.len();
    let estimate: u64 = plan
        .inputs
        .iter()
        .map(|i| i.rows * per_row as u64 + i.identity_bytes)
        .sum();
    (estimate.div_ceil(budget.max(1) as u64) as usize).clamp(1, SHARDS)
}

/// Decides the rows to keep; `budget` bounds the table's memory (see the module docs).
pub(crate) fn winners(
    plan: &Plan,
    workers: usize,
    budget: Option<usize>,
) -> Result<Winners, TransformError> {
    let models = plan.models.len();
    let mut winners = Winners {
        bits: plan
            .inputs
            .iter()
            .map(|i| vec![0u64; (i.rows as usize * models).div_ceil(64)])
            .collect(),
        models,
        passes: ranges(plan, budget),
    };
    let passes = winners.passes;
    let hasher = hashbrown::DefaultHashBuilder::default();
    for pass in 0..passes {
        let started = Instant::now();
        let (lo, hi) = (pass * SHARDS / passes, (pass + 1) * SHARDS / passes);
        // Every flat row's identity may be a new one; the footers give the identities' size.
        let rows: u64 = plan.inputs.iter().map(|i| i.rows).sum();
        let bytes: u64 = plan.inputs.iter().map(|i| i.identity_bytes).sum();
        let shards: Vec<Mutex<Shard>> = (lo..hi)
            .map(|_| {
                Mutex::new(Shard::with_capacity(
                    (rows as usize).div_ceil(SHARDS),
                    (bytes as usize).div_ceil(SHARDS),
                    models,
                ))
            })
            .collect();
        on_workers(
            workers,
            plan.inputs.len(),
            |_| Vec::<(u32, u64, KeyRow)>::new(),
            |scratch, i| {
                plan.keys(i, |first, identity, rows| {
                    scatter(identity, rows, &hasher, lo..hi, scratch);
                    for run in scratch.chunk_by(|a, b| a.0 == b.0) {
                        let mut shard = shards[run[0].0 as usize - lo]
                            .lock()
                            .unwrap_or_else(|e| e.into_inner());
                        for (_, hash, key) in run {
                            let id = identity.value(key.row as usize).as_bytes();
                            shard.insert(*hash, id, models, key, loc(i, first + key.row as u64));
                        }
                    }
                })
            },
        )?;
        let mut shards: Vec<Shard> = shards
            .into_iter()
            .map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let bytes: usize = shards.iter().map(Shard::bytes).sum();
        let ties = resolve_ties(plan, workers, &mut shards)?;
        let mut identities = 0;
        for shard in &shards {
            identities += shard.hashes.len();
            for (slot, c) in shard.candidates.iter().enumerate() {
                if c.loc != NONE {
                    winners.set(c.loc, slot % models);
                }
            }
        }
        tracing::info!(
            pass = pass + 1,
            passes,
            identities,
            ties,
            table_mb = bytes / 1_000_000,
            seconds = started.elapsed().as_secs_f64(),
            "rows to keep chosen"
        );
    }
    Ok(winners)
}

/// `rows` with the hash of their identity, those of shards `range` only, ordered by shard (a
/// counting sort: one lock per shard per chunk).
fn scatter(
    identity: &StringArray,
    rows: &[KeyRow],
    hasher: &hashbrown::DefaultHashBuilder,
    range: std::ops::Range<usize>,
    out: &mut Vec<(u32, u64, KeyRow)>,
) {
    out.clear();
    let mut counts = [0usize; SHARDS + 1];
    let mut hashed = Vec::with_capacity(rows.len());
    let mut last = (u32::MAX, 0u64);
    for key in rows {
        if key.row != last.0 {
            last = (
                key.row,
                hasher.hash_one(identity.value(key.row as usize).as_bytes()),
            );
        }
        // Not the bits the table itself uses (the low ones, and the top seven).
        let shard = ((last.1 >> 32) as usize) % SHARDS;
        if range.contains(&shard) {
            counts[shard + 1] += 1;
            hashed.push((shard as u32, last.1, *key));
        }
    }
    for s in 1..=SHARDS {
        counts[s] += counts[s - 1];
    }
    let Some(&fill) = hashed.first() else {
        return;
    };
    out.resize(hashed.len(), fill);
    for h in hashed {
        let at = &mut counts[h.0 as usize];
        out[*at] = h;
        *at += 1;
    }
}

/// Settles every slot whose best rows tie on (score date, batch) by the smallest record id
/// (nulls last; then the first row read). Returns how many slots were tied.
fn resolve_ties(
    plan: &Plan,
    workers: usize,
    shards: &mut [Shard],
) -> Result<usize, TransformError> {
    // Per input, the (row, shard, slot) of every row still tied for its slot's best.
    let mut wanted: Vec<Vec<(u64, u32, u32)>> = vec![Vec::new(); plan.inputs.len()];
    for (s, shard) in shards.iter_mut().enumerate() {
        for t in std::mem::take(&mut shard.ties) {
            let best = shard.candidates[t.slot as usize];
            if best.tied && best.date == t.date && best.rank == t.rank {
                wanted[input_of(t.loc)].push((row_of(t.loc), s as u32, t.slot));
            }
        }
    }
    if wanted.iter().all(Vec::is_empty) {
        return Ok(0);
    }
    for w in &mut wanted {
        w.sort_unstable();
    }
    let found = on_workers(
        workers,
        plan.inputs.len(),
        |_| Vec::<(u32, u32, Option<String>, u64)>::new(),
        |out, i| {
            let want = &wanted[i];
            if want.is_empty() {
                return Ok(());
            }
            let mut j = 0;
            plan.record_ids(i, |first, len, ids| {
                while let Some(&(row, shard, slot)) = want.get(j) {
                    if row >= first + len as u64 {
                        break;
                    }
                    let r = (row - first) as usize;
                    let id = ids.and_then(|a| a.is_valid(r).then(|| a.value(r).to_string()));
                    out.push((shard, slot, id, loc(i, row)));
                    j += 1;
                }
            })
        },
    )?;
    // The smallest record id (None last), then the first read.
    let mut best: HashMap<(u32, u32), (Option<String>, u64)> = HashMap::new();
    for (shard, slot, id, at) in found.into_iter().flatten() {
        let better = |cur: &(Option<String>, u64)| match (&id, &cur.0) {
            (Some(a), Some(b)) => (a.as_str(), at) < (b.as_str(), cur.1),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => at < cur.1,
        };
        match best.get_mut(&(shard, slot)) {
            Some(cur) if !better(cur) => {}
            Some(cur) => *cur = (id, at),
            None => {
                best.insert((shard, slot), (id, at));
            }
        }
    }
    let tied = best.len();
    for ((shard, slot), (_, at)) in best {
        shards[shard as usize].candidates[slot as usize].loc = at;
    }
    Ok(tied)
}
