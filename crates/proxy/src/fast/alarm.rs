//! A fast-path connection's one timer, re-armed lazily.
//!
//! Every request waits twice with a deadline: for the client's next
//! request (`idle_timeout`, or the park delay) and for the target's answer
//! (`response_timeout`). A tokio timer per wait registers an entry in the
//! worker's timer wheel and removes it again, and building one looks up
//! the runtime's handle: about 1,300 instructions per request, a tenth of
//! the fast path's own work (callgrind, `bench/profile.sh`'s load).
//!
//! Deadlines this far off almost never pass, so the connection keeps one
//! timer ([`Alarm`]) that is never armed more than [`HORIZON`] ahead. A
//! wait whose deadline is later than the timer leaves it as it is; when it
//! fires early, the wait re-arms it, at most [`HORIZON`] ahead again, and
//! reports a [`Woke::Tick`]. So a busy connection touches the timer wheel
//! about once per [`HORIZON`] instead of twice per request, and every wait
//! gets a chance every [`HORIZON`] to look at what it would otherwise need
//! a waker of its own for (a stop, a lost host; HAProxy checks its tasks'
//! expiry dates the same lazy way).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::task::coop;
use tokio::time::{Instant, Sleep};

/// The longest a connection's timer is armed ahead, and so the longest a
/// waiting connection goes without a [`Woke::Tick`]: how late it may
/// notice a stop or a lost host.
pub(super) const HORIZON: Duration = Duration::from_millis(250);

/// A connection's timer (pinned in its task).
pub(super) type Alarm<'a> = Pin<&'a mut Sleep>;

/// A new connection's timer, not registered until a wait needs it.
pub(super) fn new() -> Sleep {
    tokio::time::sleep_until(Instant::now() + HORIZON)
}

/// How a [`wait`] ended.
pub(super) enum Woke<T> {
    Done(T),
    /// The deadline passed first.
    Due,
    /// The timer fired before the deadline and is armed again: look at
    /// whatever else may end the wait, and wait on.
    Tick,
}

/// Polls `fut` until it is done or `deadline` passes, on the connection's
/// timer.
pub(super) async fn wait<F: Future>(
    mut alarm: Alarm<'_>,
    deadline: Instant,
    mut fut: Pin<&mut F>,
) -> Woke<F::Output> {
    poll_fn(|cx| {
        let had_budget = coop::has_budget_remaining();
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Woke::Done(v));
        }
        if alarm.deadline() > deadline {
            // Armed for later than this wait may last.
            alarm.as_mut().reset(deadline);
        }
        // As tokio's `Timeout` does: a future that spent the task's
        // budget must not keep the timer from being seen (a `Sleep` polled
        // without budget says `Pending`), or a wait that never blocks
        // would outlive its deadline.
        let fired = if had_budget && !coop::has_budget_remaining() {
            Pin::new(&mut coop::unconstrained(alarm.as_mut())).poll(cx)
        } else {
            alarm.as_mut().poll(cx)
        };
        match fired {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let now = Instant::now();
                if now >= deadline {
                    return Poll::Ready(Woke::Due);
                }
                alarm.as_mut().reset(deadline.min(now + HORIZON));
                Poll::Ready(Woke::Tick)
            }
        }
    })
    .await
}

/// The deadline passed ([`within`]).
#[derive(Debug)]
pub(super) struct Late;

/// `fut`, unless `deadline` passes first: `tokio::time::timeout_at` on the
/// connection's timer, for waits with nothing else to look at.
pub(super) async fn within<F: Future>(
    mut alarm: Alarm<'_>,
    deadline: Instant,
    fut: F,
) -> Result<F::Output, Late> {
    let mut fut = std::pin::pin!(fut);
    loop {
        match wait(alarm.as_mut(), deadline, fut.as_mut()).await {
            Woke::Done(v) => return Ok(v),
            Woke::Due => return Err(Late),
            Woke::Tick => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_deadline_far_beyond_the_horizon_is_kept_to_the_tick() {
        let mut alarm = std::pin::pin!(new());
        let start = Instant::now();
        let deadline = start + Duration::from_secs(3);
        let mut never = std::pin::pin!(std::future::pending::<()>());
        let mut ticks = 0;
        loop {
            match wait(alarm.as_mut(), deadline, never.as_mut()).await {
                Woke::Done(()) => unreachable!(),
                Woke::Due => break,
                Woke::Tick => ticks += 1,
            }
        }
        assert_eq!(Instant::now(), deadline, "due exactly at its deadline");
        // One tick per horizon before it: the wait could look around.
        assert_eq!(ticks, 11);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_brings_the_timer_forward() {
        let mut alarm = std::pin::pin!(new());
        let start = Instant::now();
        // Armed for the horizon by a long wait that ended early...
        let r = within(alarm.as_mut(), start + Duration::from_secs(60), async { 7 }).await;
        assert_eq!(r.unwrap(), 7);
        // ...then a short one is due at its own deadline, not the timer's.
        let short = start + Duration::from_millis(10);
        let r = within(alarm.as_mut(), short, std::future::pending::<()>()).await;
        assert!(r.is_err());
        assert_eq!(Instant::now(), short);
        // And a fired timer serves the next wait.
        let next = Instant::now() + Duration::from_millis(400);
        let r = within(alarm.as_mut(), next, std::future::pending::<()>()).await;
        assert!(r.is_err());
        assert_eq!(Instant::now(), next);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_leaves_the_timer_registered_as_it_was() {
        let mut alarm = std::pin::pin!(new());
        let start = Instant::now();
        let first = alarm.deadline();
        for i in 1..=5u64 {
            // A wait that ends at once, each with a later deadline: the
            // timer is not moved.
            let r = within(
                alarm.as_mut(),
                start + Duration::from_secs(i),
                tokio::task::yield_now(),
            )
            .await;
            assert!(r.is_ok());
            assert_eq!(alarm.deadline(), first);
        }
    }

    /// A future that never blocks but spends the task's budget on every
    /// poll (as a fast stream may) still meets its deadline.
    #[tokio::test]
    async fn a_future_that_spends_the_budget_cannot_outlive_its_deadline() {
        let mut alarm = std::pin::pin!(new());
        let busy = async {
            loop {
                coop::consume_budget().await;
            }
        };
        let deadline = Instant::now() + Duration::from_millis(50);
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            within(alarm.as_mut(), deadline, busy),
        )
        .await;
        assert!(matches!(r, Ok(Err(Late))), "due at its deadline: {r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn what_completes_before_its_deadline_is_returned() {
        let mut alarm = std::pin::pin!(new());
        let deadline = Instant::now() + Duration::from_secs(2);
        let slow = tokio::time::sleep(Duration::from_millis(900));
        let r = within(alarm.as_mut(), deadline, async {
            slow.await;
            "answer"
        })
        .await;
        assert_eq!(r.unwrap(), "answer");
        assert!(Instant::now() < deadline);
    }
}
