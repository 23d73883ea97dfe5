//! Telling systemd how the daemon is (`Type=notify`): READY=1 once the
//! programs are attached and the listeners bound, STOPPING=1 on the way
//! out, and a watchdog ping from the runtime while it serves (a wedged
//! runtime stops pinging and systemd restarts it). Outside systemd
//! (`NOTIFY_SOCKET` unset) each call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// The daemon is serving.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// The daemon is reloading its config (READY=1 follows).
pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

/// The daemon is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half its interval until shutdown, if systemd set
/// one (`WatchdogSec=`).
pub async fn watchdog(shutdown: CancellationToken) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tracing::info!(every_ms = every.as_millis(), "pinging the systemd watchdog");
    loop {
        notify(&[NotifyState::Watchdog]);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
