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

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    access::{Access, Delivery},
    config::{Config, Notify, NotifyFormat, NotifyUrl},
    time::now_ms,
};

/// Notices taken from the outbox per round.
const BATCH: usize = 16;
/// The delivery loop wakes at least this often.
const TICK: Duration = Duration::from_secs(5);
/// Longest wait between two attempts at one notice.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Delivers the outbox's notices until shutdown.
pub async fn run(access: Arc<Access>, config: Arc<Config>, shutdown: CancellationToken) {
    let client = http::Client::new(config.upstream_mark);
    loop {
        let due = match access.outbox_due(BATCH).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                Vec::new()
            }
        };
        for delivery in &due {
            deliver(&access, &config, &client, delivery).await;
        }
        if due.len() == BATCH {
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

/// One attempt at one notice; its outcome is written back to the outbox.
async fn deliver(access: &Access, config: &Config, client: &http::Client, delivery: &Delivery) {
    let Some(webhook) = config.notify.iter().find(|n| n.name == delivery.route) else {
        // Its webhook left the config: kept queued, retried rarely, in case
        // it comes back.
        let retry = now_ms() + duration_ms(MAX_BACKOFF);
        let _ = access
            .outbox_failed(delivery.id, retry, "no webhook of this name in the config")
            .await;
        return;
    };
    let outcome = match url_of(webhook).await {
        Ok(url) => {
            client
                .post(&url, &delivery.key, &body(webhook.format, delivery))
                .await
        }
        Err(e) => Err(e),
    };
    let result = match outcome {
        Ok(()) => {
            tracing::info!(notify = %webhook.name, event = %delivery.notice.event, key = %delivery.key, "notification delivered");
            access.outbox_delivered(delivery.id).await
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
            access
                .outbox_failed(delivery.id, now_ms() + duration_ms(backoff), &error)
                .await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot update the notification outbox");
    }
}

/// The webhook's URL: from the config, or read (each time: it may be
/// rotated) from its root-only file.
async fn url_of(webhook: &Notify) -> Result<String, String> {
    let url = match &webhook.url {
        NotifyUrl::Inline(url) => url.clone(),
        NotifyUrl::File(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read url_file {}: {e}", path.display()))?
            .trim()
            .to_owned(),
    };
    crate::config::check_webhook_url(&url).map_err(|e| format!("the webhook URL {e}"))?;
    Ok(url)
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
        NotifyFormat::Slack => serde_json::json!({ "text": delivery.notice.text() }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
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
    fn backoff_doubles_up_to_five_minutes() {
        let waits: Vec<u64> = (0..12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }
}
