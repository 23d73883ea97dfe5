//! Webhook delivery: the notices in the grant database's outbox, to each
//! `[[notify]]` webhook, at least once. A notice is taken off the outbox
//! only once its webhook answered 2xx; a receiver that is down, slow or
//! answers anything else gets it again later (backoff doubling from 1 s to
//! 5 min), with the same `Idempotency-Key` every time, also after a
//! restart. Deliveries come from a socket carrying the daemon's upstream
//! mark, so a webhook that is itself a watched target is still reached.
//!
//! A webhook URL may be a secret (Slack's are): it is never logged or
//! shown; logs and status name the webhook by its `name`.

mod http;

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    access::{Access, Delivery},
    config::{Config, Notify, NotifyFormat, NotifyUrl, SharedConfig},
    time::{now_ms, UnixMs},
};

/// Notices taken from the outbox per round.
const BATCH: usize = 16;
/// The delivery loop wakes at least this often.
const TICK: Duration = Duration::from_secs(5);
/// Longest wait between two attempts at one notice.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Delivers the outbox's notices until shutdown.
pub async fn run(access: Arc<Access>, shared: SharedConfig, shutdown: CancellationToken) {
    let client = Arc::new(http::Client::new(shared.load().upstream_mark));
    loop {
        let due = match access.outbox_due(BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                Vec::new()
            }
        };
        let full = due.len() == BATCH;
        // One sequence per webhook, all at once: a webhook that is slow or
        // down delays only its own notices.
        let mut by_route: BTreeMap<String, Vec<Delivery>> = BTreeMap::new();
        for delivery in due {
            by_route
                .entry(delivery.route.clone())
                .or_default()
                .push(delivery);
        }
        // The webhooks as configured now (a reload may change them).
        let config = shared.load_full();
        let mut sends = tokio::task::JoinSet::new();
        for deliveries in by_route.into_values() {
            let (access, config, client) = (
                Arc::clone(&access),
                Arc::clone(&config),
                Arc::clone(&client),
            );
            sends.spawn(
                async move { deliver_in_order(&access, &config, &client, &deliveries).await },
            );
        }
        while sends.join_next().await.is_some() {}
        if full {
            continue;
        }
        let wait = match access.outbox_next_due().await {
            Ok(Some(at)) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
            _ => TICK,
        }
        .min(TICK);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = access.outbox_changed() => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One webhook's due notices, in order; after the first that fails, the
/// rest wait as long as it does (the webhook is down: no point in trying
/// them now).
async fn deliver_in_order(
    access: &Access,
    config: &Config,
    client: &http::Client,
    deliveries: &[Delivery],
) {
    for (i, delivery) in deliveries.iter().enumerate() {
        let Err(retry_at) = deliver(access, config, client, delivery).await else {
            continue;
        };
        for later in &deliveries[i + 1..] {
            let _ = access
                .outbox_failed(
                    later.id,
                    retry_at,
                    "not tried: an earlier notice to this webhook failed",
                )
                .await;
        }
        return;
    }
}

/// One attempt at one notice; its outcome is written back to the outbox.
/// Failed: when it is tried again.
async fn deliver(
    access: &Access,
    config: &Config,
    client: &http::Client,
    delivery: &Delivery,
) -> Result<(), UnixMs> {
    let Some(webhook) = config.notify.iter().find(|n| n.name == delivery.route) else {
        // Its webhook left the config: kept queued, retried rarely, in case
        // it comes back.
        let retry = now_ms() + duration_ms(MAX_BACKOFF);
        let _ = access
            .outbox_failed(delivery.id, retry, "no webhook of this name in the config")
            .await;
        return Err(retry);
    };
    let outcome = match url_of(webhook).await {
        Ok(url) => {
            client
                .post(&url, &delivery.key, &body(webhook.format, delivery))
                .await
        }
        Err(e) => Err(e),
    };
    let (result, outcome) = match outcome {
        Ok(()) => {
            tracing::info!(notify = %webhook.name, event = %delivery.notice.event, key = %delivery.key, "notification delivered");
            (access.outbox_delivered(delivery.id).await, Ok(()))
        }
        Err(error) => {
            let backoff = backoff(delivery.attempts);
            tracing::warn!(
                notify = %webhook.name,
                event = %delivery.notice.event,
                attempts = delivery.attempts + 1,
                error = %error,
                retry_in_ms = backoff.as_millis(),
                "notification not delivered; it stays queued"
            );
            let retry_at = now_ms() + duration_ms(backoff);
            (
                access.outbox_failed(delivery.id, retry_at, &error).await,
                Err(retry_at),
            )
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot update the notification outbox");
    }
    outcome
}

/// The webhook's URL: from the config, or read (each time: it may be
/// rotated) from its root-only file.
async fn url_of(webhook: &Notify) -> Result<String, String> {
    let url = match &webhook.url {
        NotifyUrl::Inline(url) => url.clone(),
        NotifyUrl::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_url_file(&path))
                .await
                .map_err(|e| format!("cannot read url_file: {e}"))??
        }
    };
    crate::config::check_webhook_url(&url).map_err(|e| format!("the webhook URL {e}"))?;
    Ok(url)
}

/// A webhook URL from `path`, which must be a regular file (not a link)
/// owned by root and readable by root only: whoever could write it could
/// silence the alerts or send the daemon's marked connections anywhere.
fn read_url_file(path: &Path) -> Result<String, String> {
    use std::{
        io::Read as _,
        os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    };
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open url_file {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat url_file {shown}: {e}"))?;
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "url_file {shown} must be a file owned by root and readable by root only (chown root, chmod 600)"
        ));
    }
    let mut url = String::new();
    file.take(8192)
        .read_to_string(&mut url)
        .map_err(|e| format!("cannot read url_file {shown}: {e}"))?;
    Ok(url.trim().to_owned())
}

/// The request body for `format`: the notice as JSON with its key, or
/// Slack's `{"text": ...}`.
pub fn body(format: NotifyFormat, delivery: &Delivery) -> Vec<u8> {
    let value = match format {
        NotifyFormat::Json => {
            let mut value = serde_json::to_value(&delivery.notice).unwrap_or_default();
            value["key"] = serde_json::json!(delivery.key);
            value
        }
        NotifyFormat::Slack => serde_json::json!({ "text": slack_escape(&delivery.notice.text()) }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Text as Slack's `text` takes it: `&`, `<` and `>` escaped, so that
/// nothing a user typed (a reason) can ping a channel (`<!channel>`) or
/// plant a link.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The wait after `attempts` failed attempts: 1 s, 2 s, 4 s, ... 5 min.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(9)).min(MAX_BACKOFF)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_file_must_be_roots_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("url");
        std::fs::write(&path, "https://hooks.example/T0/B0/secret\n").unwrap();
        let mode = |m: u32| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m));
        mode(0o644).unwrap();
        let refused = read_url_file(&path).unwrap_err();
        assert!(refused.contains("readable by root only"), "{refused}");
        assert!(
            !refused.contains("secret"),
            "the error shows the URL: {refused}"
        );
        mode(0o600).unwrap();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(
                read_url_file(&path).unwrap(),
                "https://hooks.example/T0/B0/secret"
            );
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_url_file(&link).unwrap_err().contains("cannot open"));
    }

    #[test]
    fn slack_text_cannot_ping_or_link() {
        assert_eq!(
            slack_escape("<!channel> <https://x|approve> & co"),
            "&lt;!channel&gt; &lt;https://x|approve&gt; &amp; co"
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let waits: Vec<u64> = (0..12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
