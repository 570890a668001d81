//! `GET /events`: the live stream of deployment steps and target changes.

use axum::extract::State;
use axum::response::IntoResponse;

use crate::AdminState;

/// `GET /events`: server-sent events: `event: ready` at once, then
/// `event: deployment` for every recorded
/// deployment step and `event: target` for every target state change, each
/// source in the order it happened. A subscriber too slow to keep up gets
/// an `event: lagged` saying how many it missed, never a silent gap. The
/// stream ends (cleanly) when the daemon stops.
pub(crate) async fn events(State(s): State<AdminState>) -> impl IntoResponse {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use tokio::sync::broadcast::error::RecvError;
    let (tx, rx) = tokio::sync::mpsc::channel::<Sse>(1024);
    // A first event at once: the response head goes out with the first
    // chunk, and a client (a browser's fetch) should not wait for news to
    // learn that it is connected.
    let _ = tx.try_send(Sse::default().event("ready").data("connected"));
    let mut targets = s.target_events.subscribe();
    let t2 = tx.clone();
    tokio::spawn(async move {
        loop {
            let ev = match targets.recv().await {
                Ok(e) => Sse::default().event("target").json_data(serde_json::json!({
                    "service": e.service, "target": e.name, "addr": e.addr.to_string(), "revision": e.revision,
                    "from": e.from.as_str(), "to": e.to.as_str(), "reason": e.reason,
                })),
                Err(RecvError::Lagged(n)) => Ok(Sse::default().event("lagged").data(format!("{n} target events missed"))),
                Err(RecvError::Closed) => return,
            };
            if let Ok(ev) = ev {
                if t2.send(ev).await.is_err() {
                    return;
                }
            }
        }
    });
    for d in s.deployers.values() {
        let mut steps = d.subscribe();
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                let ev = match steps.recv().await {
                    Ok(e) => Sse::default().event("deployment").json_data(&e),
                    Err(RecvError::Lagged(n)) => Ok(Sse::default()
                        .event("lagged")
                        .data(format!("{n} deployment events missed"))),
                    Err(RecvError::Closed) => return,
                };
                if let Ok(ev) = ev {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    // Ends when the daemon stops (the body then closes with its last chunk).
    let stopping = s.stopping.clone();
    let stream =
        futures_util::stream::unfold((rx, stopping), |(mut rx, mut stopping)| async move {
            let e = tokio::select! {
                e = rx.recv() => e,
                _ = stopping.wait_for(|s| *s) => None,
            };
            e.map(|e| (Ok::<_, std::convert::Infallible>(e), (rx, stopping)))
        });
    axum::response::sse::Sse::new(stream).keep_alive(KeepAlive::default())
}
