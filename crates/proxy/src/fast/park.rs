//! Idle keep-alive connections without a task.
//!
//! A connection's task is about 1 kB (its future, the task header, tokio's
//! I/O registration), held for as long as the client keeps the connection
//! open, which for a browser or a pooling client is mostly idle time.
//! nginx holds an idle connection in ~0.6 kB. So a plain TCP connection
//! that has sent nothing for [`PARK_AFTER`] after a response leaves its
//! task: the socket moves from tokio's reactor to this worker's own epoll
//! set (one-shot), and what the connection needs to go on (its peer, its
//! listen address, its idle deadline, its hand-over to hyper: ~80 bytes)
//! into a slot here.
//!
//! One parker task per worker then:
//! - spawns the connection's task anew when the client sends (or closes):
//!   the task starts at reading the next request, as if it had never left;
//! - closes it at its `idle_timeout`, as its task would have (sweeps at
//!   most every [`SWEEP_EVERY`], so up to that much later);
//! - on a stop, spawns every parked connection's task, which then does
//!   what any idle connection does on a stop (a request within `LINGER`
//!   is answered with `Connection: close`; silence closes it). Until then
//!   each slot holds the connection's `alive` sender, so the worker's
//!   shutdown waits for them as for any connection.
//!
//! Moving a socket costs four `epoll_ctl` calls and an `epoll_wait` per
//! idle period longer than [`PARK_AFTER`]: nothing beside a client's think
//! time. TLS connections are not parked (rustls holds their state).
//!
//! The parker and `LIVE` are per thread: this relies on each worker being
//! one current-thread runtime (`server::worker`), so a connection's task,
//! its parker and its resumed task all run on that one thread.
//!
//! While any connection of the worker is in its task, the parker also
//! keeps a timer of its own due within [`AHEAD`]. tokio wakes its runtime
//! (a write to its eventfd) whenever a newly armed timer is due before
//! every other, and the [`PARK_AFTER`] deadline each request arms was
//! often that one: 0.43 writes per request, measured with `strace -c`,
//! none with this timer.
//!
//! glibc keeps the freed tasks' memory in its arenas; after a batch of
//! parks the parker gives it back (`malloc_trim`), at most once a second.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::Handover;
use crate::server::Front;

/// How long a connection stays in its task after a response before it is
/// parked: long enough that a client sending its next request at once
/// (a benchmark, a pipeline of page loads) never pays for the move.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(250);

/// The least time between two sweeps for idle deadlines (and so how late
/// a parked connection may be closed after its `idle_timeout`).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Parks between two returns of memory to the system.
const TRIM_BATCH: usize = 256;
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// The parker's own timer is due within this, ahead of any connection's
/// [`PARK_AFTER`] (see the module docs).
const AHEAD: Duration = Duration::from_millis(100);

/// Events taken per `epoll_wait`.
const BATCH: usize = 256;

/// A parked connection: everything its task needs to go on.
struct Parked {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    until: Instant,
    front: Arc<Front>,
    hand: Handover,
}

#[derive(Default)]
struct Slots {
    /// By slot; the generation tells a slot's new tenant from an old one.
    all: Vec<(u32, Option<Parked>)>,
    free: Vec<u32>,
    /// The earliest idle deadline among those parked (maybe earlier: it is
    /// exact after each sweep, and only lowered in between).
    next_due: Option<Instant>,
    parked_since_trim: usize,
    stopping: bool,
}

impl Slots {
    fn insert(&mut self, p: Parked) -> u64 {
        gauge(&p).fetch_add(1, Relaxed);
        self.parked_since_trim += 1;
        self.next_due = Some(self.next_due.map_or(p.until, |d| d.min(p.until)));
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.all.push((0, None));
                (self.all.len() - 1) as u32
            }
        };
        let slot = &mut self.all[i as usize];
        slot.0 = slot.0.wrapping_add(1);
        slot.1 = Some(p);
        (u64::from(slot.0) << 32) | u64::from(i)
    }

    fn take(&mut self, key: u64) -> Option<Parked> {
        let i = (key & 0xffff_ffff) as usize;
        let slot = self.all.get_mut(i)?;
        if u64::from(slot.0) != key >> 32 {
            return None;
        }
        let p = slot.1.take()?;
        gauge(&p).fetch_sub(1, Relaxed);
        self.free.push(i as u32);
        Some(p)
    }
}

pub(crate) struct Parker {
    epoll: AsyncFd<OwnedFd>,
    slots: Mutex<Slots>,
    /// Wakes the parker's task: an earlier deadline, or a batch to trim.
    poke: Notify,
    worker: usize,
    /// For the connections' tasks, when resumed.
    stop: watch::Receiver<bool>,
}

thread_local! {
    /// This worker thread's parker (none outside the workers).
    static PARKER: std::cell::RefCell<Option<Arc<Parker>>> = const { std::cell::RefCell::new(None) };
    /// Fast-path connections of this worker in their tasks.
    static LIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts a fast-path connection's task while it lives (see [`AHEAD`]);
/// dropped when the connection goes to hyper.
pub(super) struct Live;

impl Live {
    pub(super) fn new() -> Live {
        let was = LIVE.get();
        LIVE.set(was + 1);
        if was == 0 {
            // The parker may be asleep without its timer.
            PARKER.with(|c| {
                if let Some(p) = &*c.borrow() {
                    p.poke.notify_one();
                }
            })
        }
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.set(LIVE.get().saturating_sub(1));
    }
}

/// Starts this worker's parker; called on the worker's runtime. Without
/// one (it could not be made), connections simply stay in their tasks.
pub(crate) fn install(worker: usize, stop: watch::Receiver<bool>) {
    match Parker::new(worker, stop.clone()) {
        Ok(p) => {
            let p = Arc::new(p);
            PARKER.with(|c| *c.borrow_mut() = Some(p.clone()));
            tokio::spawn(p.run(stop));
        }
        Err(e) => {
            tracing::warn!(worker, error = %e, "cannot make the idle-connection parker; idle connections keep their tasks");
        }
    }
}

/// Whether a connection on this thread can be parked.
pub(super) fn available() -> bool {
    PARKER.with(|c| c.borrow().is_some())
}

/// Parks an idle connection (see the module docs). Its task ends.
pub(super) fn park(
    stream: TcpStream,
    peer: SocketAddr,
    until: Instant,
    front: Arc<Front>,
    hand: Handover,
) {
    let Some(parker) = PARKER.with(|c| c.borrow().clone()) else {
        return;
    };
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot park an idle connection; closing it");
            return;
        }
    };
    parker.park(Parked {
        stream,
        peer,
        until,
        front,
        hand,
    });
}

impl Parker {
    fn new(worker: usize, stop: watch::Receiver<bool>) -> io::Result<Parker> {
        // SAFETY: epoll_create1 has no preconditions; a non-negative result
        // is a new descriptor that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the OwnedFd is owned by the AsyncFd from here on and is
        // never replaced.
        let epoll = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Parker {
            epoll,
            slots: Mutex::new(Slots::default()),
            poke: Notify::new(),
            worker,
            stop,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn park(&self, p: Parked) {
        let fd = p.stream.as_raw_fd();
        let mut slots = self.lock();
        if slots.stopping {
            drop(slots);
            return self.resume(p);
        }
        let earlier = slots.next_due.is_none_or(|d| p.until < d);
        let key = slots.insert(p);
        let batch = slots.parked_since_trim == TRIM_BATCH;
        // Level-triggered: a request that came while the socket was moved
        // is reported at once.
        let flags = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT;
        if let Err(e) = ctl(self.fd(), libc::EPOLL_CTL_ADD, fd, flags as u32, key) {
            let p = slots.take(key);
            drop(slots);
            tracing::debug!(error = %e, "cannot park an idle connection; keeping its task");
            if let Some(p) = p {
                self.resume(p);
            }
            return;
        }
        drop(slots);
        if earlier || batch {
            self.poke.notify_one();
        }
    }

    fn fd(&self) -> RawFd {
        self.epoll.get_ref().as_raw_fd()
    }

    /// Gives a connection its task back.
    fn resume(&self, p: Parked) {
        let _ = ctl(self.fd(), libc::EPOLL_CTL_DEL, p.stream.as_raw_fd(), 0, 0);
        match TcpStream::from_std(p.stream) {
            Ok(s) => super::resume(
                s,
                p.peer,
                p.front,
                self.worker,
                self.stop.clone(),
                p.hand,
                p.until,
            ),
            Err(e) => {
                tracing::debug!(peer = %p.peer, error = %e, "cannot resume a parked connection; closing it")
            }
        }
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let mut last_sweep = Instant::now();
        let mut last_trim = Instant::now();
        let mut last_tick = Instant::now();
        loop {
            let (due, trim) = {
                let s = self.lock();
                (s.next_due, s.parked_since_trim >= TRIM_BATCH)
            };
            let sweep_at = due.map(|d| d.max(last_sweep + SWEEP_EVERY));
            let trim_at = trim.then(|| last_trim + TRIM_EVERY);
            let tick_at = (LIVE.get() > 0).then(|| last_tick + AHEAD);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                // In this order: a stop first (rare, and never starved by
                // a stream of wake-ups); then readiness, so a request that
                // came as its connection's deadline passed is served, not
                // cut by the sweep.
                biased;
                _ = stop.wait_for(|s| *s) => {
                    let all: Vec<Parked> = {
                        let mut s = self.lock();
                        s.stopping = true;
                        s.next_due = None;
                        s.free.clear();
                        s.all.drain(..).filter_map(|(_, p)| p).collect()
                    };
                    for p in &all {
                        gauge(p).fetch_sub(1, Relaxed);
                    }
                    for p in all {
                        self.resume(p);
                    }
                    PARKER.with(|c| c.borrow_mut().take());
                    return;
                }
                r = self.epoll.readable() => {
                    let Ok(mut ready) = r else {
                        // The reactor is gone: the runtime is ending.
                        return;
                    };
                    // One batch per turn: a stop, sweep or other task
                    // gets its turn between batches.
                    // SAFETY: `events` has room for `BATCH` entries.
                    let r = unsafe {
                        libc::epoll_wait(self.fd(), events.as_mut_ptr(), BATCH as i32, 0)
                    };
                    // An error (EINTR) leaves the readiness set: tried again.
                    let n = usize::try_from(r).unwrap_or(BATCH);
                    let n_events = if r < 0 { 0 } else { n };
                    for ev in &events[..n_events] {
                        let key = ev.u64;
                        let p = self.lock().take(key);
                        if let Some(p) = p {
                            self.resume(p);
                        }
                    }
                    if n < BATCH {
                        // Nothing left.
                        ready.clear_ready();
                    }
                }
                _ = tokio::time::sleep_until(sweep_at.unwrap_or(far)), if sweep_at.is_some() => {
                    last_sweep = Instant::now();
                    self.sweep(last_sweep);
                }
                _ = tokio::time::sleep_until(trim_at.unwrap_or(far)), if trim_at.is_some() => {
                    last_trim = Instant::now();
                    self.lock().parked_since_trim = 0;
                    trim_memory();
                }
                _ = tokio::time::sleep_until(tick_at.unwrap_or(far)), if tick_at.is_some() => {
                    last_tick = Instant::now();
                }
                _ = self.poke.notified() => {}
            }
        }
    }

    /// Closes the connections whose idle deadline has passed.
    fn sweep(&self, now: Instant) {
        let mut s = self.lock();
        let mut due: Option<Instant> = None;
        let mut gone = Vec::new();
        for (i, slot) in s.all.iter_mut().enumerate() {
            let Some(p) = &slot.1 else { continue };
            if p.until <= now {
                gone.push((u64::from(slot.0) << 32) | i as u64);
            } else {
                due = Some(due.map_or(p.until, |d| d.min(p.until)));
            }
        }
        s.next_due = due;
        let closed: Vec<Parked> = gone.into_iter().filter_map(|k| s.take(k)).collect();
        drop(s);
        for p in closed {
            let _ = ctl(self.fd(), libc::EPOLL_CTL_DEL, p.stream.as_raw_fd(), 0, 0);
            // Dropping the stream closes it, as the task would have.
        }
    }
}

fn gauge(p: &Parked) -> &AtomicU64 {
    &p.front.routes.first().stats.parked_connections
}

fn ctl(epoll: RawFd, op: i32, fd: RawFd, events: u32, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: key };
    // SAFETY: `ev` lives across the call; the kernel copies it.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_memory() {}
