//! Opening a log: the upgrade of an older format first, the identity check
//! (gateway id, format), the counters loaded (or recounted from the index
//! when damaged) and raised above every key and cursor, and a torn tail of
//! the segments trimmed (the records it held set aside, counted, gapped).

use super::*;

impl DurableLog {
    /// Opens (or creates) the log at `opts.path`. Reads accounting, cursors
    /// and the segment directory listing; never a record.
    ///
    /// # Errors
    /// [`LogError::Open`]/[`LogError::Io`] if the directory cannot be
    /// opened, [`LogError::GatewayIdMismatch`] if the log belongs to another
    /// gateway id, [`LogError::NewerFormat`] for a log of a later release.
    /// A log of an earlier format is upgraded first, keeping its backlog
    /// (see `upgrade.rs`).
    pub fn open(opts: LogOptions) -> Result<Self, LogError> {
        upgrade::prepare(&opts)?;
        let log = match Self::open_once(opts.clone()) {
            // A full file system: the reserve is there for this moment.
            Err(e) if e.is_no_space() && space::release_reserve(&opts.path) => Self::open_once(opts)?,
            r => r?,
        };
        log.inner.make_reserve();
        Ok(log)
    }

    fn open_once(opts: LogOptions) -> Result<Self, LogError> {
        let io = |source| LogError::Io { path: opts.path.clone(), source };
        if !opts.path.exists() {
            std::fs::create_dir_all(&opts.path).map_err(io)?;
            if let Some(parent) = opts.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                segments::sync_dir(parent).map_err(io)?;
            }
        }
        let index = Index::open(&opts.path.join("index"), opts.cache_bytes)?;
        check_identity(&index, &opts)?;
        let mut state = load_state(&index)?;
        raise_counters(&index, &mut state)?;
        let mut recent = HashMap::new();
        for kv in index.tree.scan_prefix([index::RECENT_PREFIX]) {
            let (k, v) = kv?;
            if let (Some(seq), Some(fp)) = (seq_of(&k), index::decode_u64(&v)) {
                recent.insert(fp, seq);
            }
        }
        let mut segs = SegmentStore::open(opts.path.join("segments"), opts.segment_target()).map_err(io)?;
        let mut dead = Vec::new();
        for id in segs.ids() {
            match state.segs.get(&id).and_then(SegLive::lane) {
                Some(lane) if state.segs.get(&id).is_some_and(|l| l.records > 0) => segs.set_lane(id, lane),
                _ => dead.push(id),
            }
        }
        for id in &dead {
            state.segs.remove(id);
        }
        for (id, l) in &state.segs {
            if segs.lane(*id).is_none() {
                tracing::error!(
                    segment = format!("{id:016x}"),
                    records = l.records,
                    "payload segment is missing; its records will be reported as unreadable gaps"
                );
            }
        }
        // A cursor added by a later release starts where the cursor it was
        // split from is (the image lane from `replicate`): what that one has
        // passed is in Kafka already.
        if index.cursor(Cursor::ReplicateImages.name())?.is_none() {
            let at = index.cursor(Cursor::Replicate.name())?.unwrap_or(0);
            index.tree.insert(index::cursor_key(Cursor::ReplicateImages.name()), &at.to_be_bytes())?;
        }
        // A log that never flushed (or one from a release before the mark)
        // gets its mark now: what is in it is all there is.
        if index.tree.get(META_DURABLE)?.is_none() {
            index.tree.insert(META_DURABLE, &state.next_seq.to_be_bytes())?;
        }
        index.tree.insert(META_STATE, state.encode())?;
        let index_bytes = index.flush_durable()?.max(index::INDEX_FLOOR);
        // Only now, with the index durable, can unreferenced files go.
        segs.delete(&dead).map_err(io)?;
        segs.take_sync_plan().and_then(|p| p.run()).map_err(io)?;
        // What the previous process wrote after its last flush is synced by
        // the flush at the end of open (see there).
        segs.mark_all_dirty();
        if !dead.is_empty() {
            tracing::info!(segments = dead.len(), "deleted payload segments nothing refers to");
        }
        let used = segs.disk_bytes() + index_bytes;
        let durable = (state.next_seq, state.next_gap);
        let inner = Inner {
            opts,
            index,
            core: Mutex::new(Core::new(state, segs, recent)),
            flush_lock: Mutex::new(()),
            changes: watch::channel(0).0,
            used: watch::channel(used).0,
            durable: watch::channel(durable).0,
            index_bytes: AtomicU64::new(index_bytes),
            flushes: AtomicU64::new(0),
            reserve: std::sync::atomic::AtomicBool::new(false),
            dropped: Default::default(),
        };
        let log = Self { inner: Arc::new(inner) };
        let mark = log.inner.index.tree.get(META_DURABLE)?.as_deref().and_then(index::decode_u64).unwrap_or(0);
        log.trim_torn_tail(mark)?;
        log.forget_orphan_fingerprints(mark)?;
        // What survived above the mark is durable from here on, before any
        // reader sees it (their watermark starts at `next_seq`): its
        // payloads synced, the mark moved past it. Otherwise a reader could
        // consume and delete it and a second crash leave its fingerprints
        // above the old mark, taken for orphans at the next open.
        log.inner.flush()?;
        Ok(log)
    }

    /// After a crash: a fingerprint is written just before its record (see
    /// [`append_frame_once`](Self::append_frame_once)), so the crash can
    /// have kept the fingerprint of a record it lost. Above the durable
    /// mark (nothing there was acknowledged, nothing consumed) a
    /// fingerprint without a record is removed: the broker delivers that
    /// frame again and it must be stored, not taken for a duplicate.
    fn forget_orphan_fingerprints(&self, mark: u64) -> Result<(), LogError> {
        let tree = &self.inner.index.tree;
        let mut orphans = Vec::new();
        for kv in tree.range(key(index::RECENT_PREFIX, mark)..=key(index::RECENT_PREFIX, u64::MAX)) {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else { continue };
            let stored = [Area::Frames, Area::DeadLetters]
                .into_iter()
                .map(|a| tree.contains_key(key(a.prefix(), seq)))
                .collect::<Result<Vec<_>, _>>()?;
            if !stored.contains(&true) {
                orphans.push((seq, index::decode_u64(&v)));
            }
        }
        if orphans.is_empty() {
            return Ok(());
        }
        let mut core = self.inner.lock();
        for (seq, fp) in &orphans {
            tree.remove(key(index::RECENT_PREFIX, *seq))?;
            if let Some(fp) = fp.filter(|fp| core.recent.get(fp) == Some(seq)) {
                core.recent.remove(&fp);
            }
        }
        drop(core);
        tracing::info!(
            fingerprints = orphans.len(),
            "crash recovery: fingerprints of frames the crash did not keep removed; the broker redelivers those frames"
        );
        Ok(())
    }

    /// After a crash: intake records appended after the last completed
    /// flush were never acknowledged, and a power cut can have kept some of
    /// their index entries (sled writes in the background) but not their
    /// payloads. From the first such record whose payload does not read
    /// back, every intake record is removed (with its fingerprint) and one
    /// gap record says so: the broker still holds those frames and delivers
    /// them again, so they are stored anew, in order, and not mistaken for
    /// duplicates. What is kept is a prefix of what was appended.
    fn trim_torn_tail(&self, mark: u64) -> Result<(), LogError> {
        let tree = &self.inner.index.tree;
        let lane = [Area::Frames, Area::DeadLetters];
        let mut first_bad: Option<u64> = None;
        for area in lane {
            for kv in tree.range(key(area.prefix(), mark)..=key(area.prefix(), u64::MAX)) {
                let (k, v) = kv?;
                let Some(seq) = seq_of(&k) else { continue };
                if first_bad.is_some_and(|b| seq >= b) {
                    break;
                }
                let torn = match Slot::of(&v) {
                    Slot::Ptr(_) => match index::pointer(&v) {
                        Ok(p) => self.fetch(&p, area, seq)?.is_err(),
                        Err(_) => true,
                    },
                    Slot::Inline(_) => false,
                };
                if torn {
                    first_bad = Some(seq);
                    break;
                }
            }
        }
        let Some(from) = first_bad else { return Ok(()) };
        let mut doomed = Vec::new();
        for area in lane {
            for kv in tree.range(key(area.prefix(), from)..=key(area.prefix(), u64::MAX)) {
                if let Some(seq) = seq_of(&kv?.0) {
                    doomed.push((area, seq));
                }
            }
        }
        // Fingerprints first: a crash in between leaves records without
        // fingerprints (trimmed again at the next open), never fingerprints
        // of records that are gone.
        let mut core = self.inner.lock();
        for (_, seq) in &doomed {
            if let Some(fp) = tree.remove(key(index::RECENT_PREFIX, *seq))?.as_deref().and_then(index::decode_u64) {
                if core.recent.get(&fp) == Some(seq) {
                    core.recent.remove(&fp);
                }
            }
        }
        let mut txn = Txn::new(&self.inner, &mut core);
        let (mut bytes, mut last) = (0, from);
        for (area, seq) in &doomed {
            bytes += txn.remove(*area, *seq)?.unwrap_or(0);
            last = last.max(*seq);
        }
        let g = txn.gap(
            Lost { area: Area::Frames, from, to: last, records: doomed.len() as u64, bytes },
            GapReason::Unreadable,
            Some(
                "appended after the last flush and torn by a crash: never acknowledged, so the broker delivers \
                 these frames again"
                    .into(),
            ),
        )?;
        self.finish(txn)?;
        drop(core);
        tracing::warn!(
            from_seq = from,
            to_seq = last,
            records = doomed.len(),
            gap = g.id,
            "crash recovery: unacknowledged torn tail removed; the broker redelivers it"
        );
        Ok(())
    }
}

fn check_identity(index: &Index, opts: &LogOptions) -> Result<(), LogError> {
    match index.tree.get(META_GATEWAY)? {
        Some(found) if found.as_ref() != opts.gateway_id.as_bytes() => {
            return Err(LogError::GatewayIdMismatch {
                path: opts.path.clone(),
                found: String::from_utf8_lossy(&found).into_owned(),
                configured: opts.gateway_id.clone(),
            });
        }
        Some(_) => {}
        None => {
            index.tree.insert(META_GATEWAY, opts.gateway_id.as_bytes())?;
        }
    }
    match index.tree.get(META_FORMAT)? {
        None => {
            index.tree.insert(META_FORMAT, index::FORMAT)?;
        }
        Some(f) if f.as_ref() == index::FORMAT => {}
        Some(f) => {
            return Err(LogError::NewerFormat {
                path: opts.path.clone(),
                found: String::from_utf8_lossy(&f).into_owned(),
                known: upgrade::CURRENT,
            })
        }
    }
    Ok(())
}

/// Reads the accounting (one value) and counts the tail of appends after
/// it; recounts every record only when it is missing or damaged.
fn load_state(index: &Index) -> Result<State, LogError> {
    let stored = index.tree.get(META_STATE)?;
    if let Some(mut s) = stored.as_deref().and_then(State::decode) {
        count_tail(index, &mut s)?;
        return Ok(s);
    }
    if stored.is_some() {
        tracing::warn!("log accounting is unreadable; recounting all records");
    }
    recount(index)
}

/// Counts the appends that outlived the last written accounting: sled
/// recovers a prefix of its log, and appends are the only writes without
/// the accounting, so they are exactly the frames and dead letters at or
/// above `next_seq` (at most one group commit's worth).
fn count_tail(index: &Index, s: &mut State) -> Result<(), LogError> {
    for area in [Area::Frames, Area::DeadLetters] {
        let from = key(area.prefix(), s.next_seq);
        let to = key(area.prefix().saturating_add(1), 0);
        let mut tail = Vec::new();
        for kv in index.tree.range(from.as_slice()..to.as_slice()) {
            tail.push(Slot::of(&kv?.1));
        }
        for slot in tail {
            s.account(area, slot, true);
        }
    }
    Ok(())
}

/// Rebuilds the accounting by scanning every index entry (first open, or
/// damaged accounting). Payloads are not read.
fn recount(index: &Index) -> Result<State, LogError> {
    let mut s = State::default();
    for area in Area::ALL {
        for kv in index.tree.scan_prefix([area.prefix()]) {
            s.account(area, Slot::of(&kv?.1), true);
        }
    }
    s.set_aside = index.tree.scan_prefix([ASIDE_PREFIX]).count() as u64;
    Ok(s)
}

/// Raises `next_seq`/`next_gap` above every key present and every cursor,
/// whatever the accounting says: a number once used is never handed out
/// again, even after the records and the accounting are gone.
fn raise_counters(index: &Index, s: &mut State) -> Result<(), LogError> {
    for area in Area::ALL {
        if let Some((k, _)) = index.tree.scan_prefix([area.prefix()]).next_back().transpose()? {
            let next = seq_of(&k).map_or(0, |q| q + 1);
            if area == Area::Gaps {
                s.next_gap = s.next_gap.max(next);
            } else {
                s.next_seq = s.next_seq.max(next);
            }
        }
    }
    for kv in index.tree.scan_prefix([ASIDE_PREFIX]) {
        let (k, _) = kv?;
        if let (Some(&prefix), Some(seq)) = (k.get(1), k.get(1..).and_then(seq_of)) {
            if prefix == Area::Gaps.prefix() {
                s.next_gap = s.next_gap.max(seq + 1);
            } else {
                s.next_seq = s.next_seq.max(seq + 1);
            }
        }
    }
    for c in Cursor::ALL {
        let at = index.cursor(c.name())?.unwrap_or(0);
        if c == Cursor::ReplicateGaps {
            s.next_gap = s.next_gap.max(at);
        } else {
            s.next_seq = s.next_seq.max(at);
        }
    }
    Ok(())
}
