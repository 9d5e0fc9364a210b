//! The methods of [`Client`], the handle callers publish, subscribe and request through (the
//! struct itself is in `handle.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use agentwire_protocol::{encode_unsub, validate_pattern, validate_queue};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use agentwire_protocol::control::{InstanceInfo, Registration};

use crate::config::ConfigWatch;
use crate::conn::{Inner, ReplyOutcome};
use crate::control::{self, DiscoverQuery, Membership};
use crate::error::{CloseReason, Error, ServerError};
use crate::events::{ConnectionEvent, ConnectionEvents};
use crate::handle::Client;
use crate::headers::Headers;
use crate::info::{ServerInfo, Statistics};
use crate::message::{Message, OutboundMessage};
use crate::pending::{PendingLimits, SubscribeOptions};
use crate::subject::new_inbox;
use crate::subs::{SubEntry, SubKind};
use crate::subscriber::Subscriber;
use crate::sync::lock;

/// Removes a pending request's entry when the request ends in any way (reply, error, timeout,
/// or the future being dropped).
struct PendingRequest<'a> {
    inner: &'a Inner,
    token: u64,
}

impl Drop for PendingRequest<'_> {
    fn drop(&mut self) {
        lock(&self.inner.requests).remove(&self.token);
    }
}

/// Removes a subscription entry whose SUB was never queued (the subscribe future was dropped
/// or failed while waiting for buffer space).
struct SubscribeGuard<'a> {
    inner: &'a Inner,
    sid: u32,
    armed: bool,
}

impl Drop for SubscribeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.inner.subs).remove(&self.sid);
        }
    }
}

impl Client {
    /// Publishes `payload` on `subject`.
    ///
    /// The message is copied into the connection's write buffer and sent with others in one
    /// write; this returns once it is buffered. Use [`Client::flush`] to wait until the server
    /// has read it. Waits only when more than the write buffer limit is pending.
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// client.publish("sensors.t1", "21.5").await?;
    /// client.publish("sensors.t1", vec![1u8, 2, 3]).await?;
    /// client.flush().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSubject`] for a subject that is empty, malformed or has wildcards,
    /// [`Error::PayloadTooLarge`] over the server's max payload, [`Error::Closed`] once the
    /// connection is closed, [`Error::WriteStalled`] when the server has read nothing for a
    /// request timeout while the write buffer is full.
    pub async fn publish(&self, subject: &str, payload: impl Into<Bytes>) -> Result<(), Error> {
        let payload = payload.into();
        self.publish_message(OutboundMessage::new(subject, &payload))
            .await
    }

    /// Publishes `payload` on `subject` with a reply subject for the receivers to answer on.
    ///
    /// # Errors
    /// As [`Client::publish`], and [`Error::InvalidSubject`] for an invalid reply subject.
    pub async fn publish_with_reply(
        &self,
        subject: &str,
        reply: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let payload = payload.into();
        self.publish_message(OutboundMessage::new(subject, &payload).reply(reply))
            .await
    }

    /// Publishes `payload` on `subject` with headers.
    ///
    /// # Errors
    /// As [`Client::publish`] (headers count toward the max payload), and
    /// [`Error::HeadersNotSupported`] when the server does not offer headers.
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let payload = payload.into();
        self.publish_message(OutboundMessage::new(subject, &payload).headers(headers))
            .await
    }

    /// Publishes a message with every optional part (reply, headers); borrows the payload.
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// use agentwire_client::{Headers, OutboundMessage};
    /// let mut headers = Headers::new();
    /// headers.insert("Trace-Id", "abc123")?;
    /// let body = [0u8; 64];
    /// client
    ///     .publish_message(OutboundMessage::new("jobs.new", &body).reply("jobs.done").headers(&headers))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::publish_with_reply`] and [`Client::publish_with_headers`].
    pub async fn publish_message(&self, msg: OutboundMessage<'_>) -> Result<(), Error> {
        self.inner
            .check_publish(msg.subject, msg.reply, msg.headers, msg.payload.len())?;
        self.inner
            .enqueue_pub(
                msg.subject,
                msg.reply.unwrap_or(""),
                msg.headers,
                msg.payload,
            )
            .await
    }

    /// Answers a request: publishes `payload` on `request`'s reply subject.
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// let mut requests = client.subscribe("echo").await?;
    /// while let Some(req) = requests.next().await {
    ///     client.respond(&req, req.payload.clone()).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoReplySubject`] when the message carries no reply subject; otherwise as
    /// [`Client::publish`].
    pub async fn respond(&self, request: &Message, payload: impl Into<Bytes>) -> Result<(), Error> {
        let Some(reply) = &request.reply else {
            return Err(Error::NoReplySubject {
                subject: request.subject.to_string(),
            });
        };
        let payload = payload.into();
        self.inner
            .check_publish(reply.as_str(), None, None, payload.len())?;
        self.inner
            .enqueue_pub(reply.as_str(), "", None, &payload)
            .await
    }

    /// Waits until the server has read everything this client sent before the call: sends a
    /// PING and waits for its PONG (bounded by the request timeout). After it returns, every
    /// message the server sent before its PONG is in the subscribers' streams.
    ///
    /// # Errors
    /// [`Error::FlushTimeout`] when no PONG comes in time, [`Error::Closed`] or
    /// [`Error::Server`] when the connection closes first.
    pub async fn flush(&self) -> Result<(), Error> {
        self.inner.flush().await
    }

    /// Subscribes to a subject or pattern (`*` matches one token, a final `>` the rest).
    ///
    /// The SUB is sent asynchronously, after anything published before on this client. Other
    /// connections' messages can be missed until the server has read it: call
    /// [`Client::flush`] first when that matters.
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// let mut sub = client.subscribe("orders.*.created").await?;
    /// client.flush().await?;
    /// while let Some(msg) = sub.next().await {
    ///     println!("{} {} bytes", msg.subject, msg.payload.len());
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSubject`] for a malformed pattern, [`Error::Closed`] once the connection
    /// is closed or draining.
    pub async fn subscribe(&self, subject: &str) -> Result<Subscriber, Error> {
        self.subscribe_inner(subject, "", self.inner.settings.pending_limits)
            .await
    }

    /// Subscribes with [`SubscribeOptions`]: a queue group, and pending limits other than the
    /// client's defaults ([`crate::ConnectOptions::subscription_pending_limits`]).
    ///
    /// ```no_run
    /// use agentwire_client::SubscribeOptions;
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// // Only the latest few readings matter: keep at most 100 waiting, drop the rest.
    /// let mut readings = client
    ///     .subscribe_with("sensors.temp", SubscribeOptions::new().pending_limits(100, 1 << 20))
    ///     .await?;
    /// while let Some(reading) = readings.next().await {
    ///     println!("{:?}", reading.payload);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`Client::subscribe`], and [`Error::InvalidQueue`] for a malformed group name.
    pub async fn subscribe_with(
        &self,
        subject: &str,
        options: SubscribeOptions,
    ) -> Result<Subscriber, Error> {
        let queue = options.queue.as_deref().unwrap_or("");
        if options.queue.is_some() {
            validate_queue(queue.as_bytes()).map_err(|source| Error::InvalidQueue {
                queue: queue.to_owned(),
                source,
            })?;
        }
        let limits = options.limits(self.inner.settings.pending_limits);
        self.subscribe_inner(subject, queue, limits).await
    }

    /// Subscribes as a member of queue group `queue`: each message is delivered to one member
    /// of the group.
    ///
    /// # Errors
    /// As [`Client::subscribe`], and [`Error::InvalidQueue`] for a malformed group name.
    pub async fn queue_subscribe(&self, subject: &str, queue: &str) -> Result<Subscriber, Error> {
        validate_queue(queue.as_bytes()).map_err(|source| Error::InvalidQueue {
            queue: queue.to_owned(),
            source,
        })?;
        self.subscribe_inner(subject, queue, self.inner.settings.pending_limits)
            .await
    }

    async fn subscribe_inner(
        &self,
        subject: &str,
        queue: &str,
        limits: PendingLimits,
    ) -> Result<Subscriber, Error> {
        validate_pattern(subject.as_bytes()).map_err(|source| Error::InvalidSubject {
            subject: subject.to_owned(),
            source,
        })?;
        let inner = &*self.inner;
        let (tx, rx) = mpsc::unbounded_channel();
        let sid = inner.alloc_sid();
        let (generation, counters) = {
            let mut subs = lock(&inner.subs);
            if inner.is_closed() || inner.draining.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let (entry, counters) =
                SubEntry::with_limits(SubKind::Stream(tx), subject, queue, limits);
            subs.insert(sid, entry);
            (inner.generation(), counters)
        };
        let mut guard = SubscribeGuard {
            inner,
            sid,
            armed: true,
        };
        inner.enqueue_sub(sid, subject, queue, generation).await?;
        guard.armed = false;
        Ok(Subscriber::new(
            self.clone(),
            sid,
            subject,
            rx,
            counters,
            limits,
        ))
    }

    /// Sends a request and waits for the first reply, up to `timeout`.
    ///
    /// Replies come back on one shared inbox subscription per client (created on the first
    /// request), so a request costs one PUB and no extra round trip.
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// use std::time::Duration;
    /// let reply = client.request("math.double", "21", Duration::from_secs(1)).await?;
    /// assert_eq!(reply.payload, "42");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::NoResponders`] when nothing is subscribed to `subject`, [`Error::Timeout`]
    /// without a reply in time, [`Error::Closed`] or [`Error::Server`] when the connection
    /// closes first, and the errors of [`Client::publish`].
    pub async fn request(
        &self,
        subject: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let payload = payload.into();
        self.request_inner(subject, None, &payload, timeout).await
    }

    /// Sends a request with headers and waits for the first reply, up to `timeout`.
    ///
    /// # Errors
    /// As [`Client::request`] and [`Client::publish_with_headers`].
    pub async fn request_with_headers(
        &self,
        subject: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let payload = payload.into();
        self.request_inner(subject, Some(headers), &payload, timeout)
            .await
    }

    async fn request_inner(
        &self,
        subject: &str,
        headers: Option<&Headers>,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message, Error> {
        let inner = &*self.inner;
        inner.check_publish(subject, None, headers, payload.len())?;
        if inner.draining.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        inner.ensure_inbox()?;
        let token = inner.next_token.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{}", inner.inbox_prefix, token);
        let (tx, rx) = oneshot::channel();
        {
            let mut requests = lock(&inner.requests);
            if inner.is_closed() {
                return Err(Error::Closed);
            }
            requests.insert(token, tx);
        }
        let _pending = PendingRequest { inner, token };
        let exchange = async {
            inner.enqueue_pub(subject, &reply, headers, payload).await?;
            match rx.await {
                Ok(ReplyOutcome::Reply(msg)) => Ok(msg),
                Ok(ReplyOutcome::NoResponders) => Err(Error::NoResponders {
                    subject: subject.to_owned(),
                }),
                Ok(ReplyOutcome::Closed(reason)) => Err(reason.to_error()),
                Err(_) => Err(Error::Closed),
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                subject: subject.to_owned(),
                after: timeout,
            }),
        }
    }

    /// A new unique subject for replies: `_INBOX.` and 22 random characters.
    pub fn new_inbox(&self) -> String {
        new_inbox()
    }

    /// What the server said in its INFO frame.
    pub fn server_info(&self) -> &ServerInfo {
        &self.inner.info
    }

    /// Counters of this connection.
    pub fn statistics(&self) -> Statistics {
        self.inner.statistics()
    }

    /// Closes gracefully: unsubscribes everything, waits until the server has processed that
    /// (a flush), ends every subscriber stream after the messages it already received, writes
    /// the pending publishes and closes. Pending requests fail with [`Error::Closed`]. Bounded by
    /// the request timeout at each step.
    ///
    /// # Errors
    /// [`Error::Closed`] when the connection is already closed or draining, the flush's errors,
    /// and [`Error::CloseTimeout`] when the pending bytes could not be written in time.
    pub async fn drain(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        if inner.is_closed() || inner.draining.swap(true, Ordering::AcqRel) {
            return Err(Error::Closed);
        }
        let sids: Vec<u32> = lock(&inner.subs).keys().copied().collect();
        let flushed = match inner.enqueue_control(|b| {
            for &sid in &sids {
                encode_unsub(b, sid, 0);
            }
            Ok(())
        }) {
            Ok(()) => inner.flush().await,
            Err(e) => Err(e),
        };
        // Everything the server sent before its PONG is in the streams now; end them.
        let subs = std::mem::take(&mut *lock(&inner.subs));
        drop(subs);
        let requests = std::mem::take(&mut *lock(&inner.requests));
        for (_, tx) in requests {
            let _ = tx.send(ReplyOutcome::Closed(CloseReason::Closed));
        }
        let closed = inner.close().await;
        flushed.and(closed)
    }

    /// Writes the pending publishes, then closes the connection; subscriber streams end after
    /// the messages they already received, pending flushes and requests fail with
    /// [`Error::Closed`]. Calling it again, or after the connection died, is fine.
    ///
    /// # Errors
    /// [`Error::CloseTimeout`] when the pending bytes could not be written within the request
    /// timeout (they are dropped and the connection closed anyway).
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.close().await
    }

    /// Whether the connection is closed or closing: further calls fail with [`Error::Closed`].
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// The last non-fatal ERR the server sent (for example an unknown sid), if any.
    pub fn last_error(&self) -> Option<ServerError> {
        lock(&self.inner.last_error).clone()
    }

    /// Registers this connection as an instance of a component, and starts heartbeats.
    ///
    /// The registration is checked here first ([`Registration::validate`]), then sent; this
    /// waits (bounded by the request timeout) for the server's REGISTERED, which carries the
    /// heartbeat interval and the component's current config. From then on a background task
    /// sends a heartbeat every interval the server gave, with the load set on the returned
    /// [`Membership`], and every newer config arrives on [`Membership::config_watch`]. A
    /// connection registers once; the registration ends with [`Membership::deregister`] or when
    /// the connection closes.
    ///
    /// ```no_run
    /// use agentwire_client::{Error, ErrorCode, Registration};
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// let registration = Registration {
    ///     component: "planner".into(),
    ///     instance_id: "planner-1".into(),
    ///     ..Registration::default()
    /// };
    /// match client.register(registration).await {
    ///     Ok(membership) => println!("registered; config v{}", membership.config().version()),
    ///     Err(Error::Registration(e)) if e.error_code() == Some(ErrorCode::DuplicateInstance) => {
    ///         eprintln!("planner-1 is already running elsewhere");
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidControl`] naming the field that breaks its rule (nothing is sent),
    /// [`Error::Registration`] when the server refuses (e.g. `duplicate_instance`; the
    /// connection stays open and another registration may be tried),
    /// [`Error::AlreadyRegistered`] on a second call, [`Error::ControlTimeout`] without an
    /// answer in time, [`Error::Closed`] or [`Error::Server`] when the connection closes first.
    pub async fn register(&self, registration: Registration) -> Result<Membership, Error> {
        control::register(self, registration).await
    }

    /// The handle of this connection's registration, while it is registered.
    pub fn membership(&self) -> Option<Membership> {
        control::membership(self)
    }

    /// The registered component's config as a stream: the current version first, then every
    /// newer one ([`Membership::config_watch`]).
    ///
    /// # Errors
    /// [`Error::NotRegistered`] unless the connection is registered.
    pub fn config_watch(&self) -> Result<ConfigWatch, Error> {
        self.membership()
            .map(|m| m.config_watch())
            .ok_or(Error::NotRegistered)
    }

    /// Lists the live component instances matching `query`, as the server's registry sees them
    /// (health, load, metadata). Does not need this connection to be registered; several
    /// discoveries may be in flight at once.
    ///
    /// ```no_run
    /// use agentwire_client::DiscoverQuery;
    /// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
    /// let query = DiscoverQuery::new().capability("plan");
    /// let least_loaded = client
    ///     .discover(query)
    ///     .await?
    ///     .into_iter()
    ///     .filter(|i| i.healthy)
    ///     .min_by_key(|i| i.load.in_flight);
    /// # drop(least_loaded); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidControl`] for a filter that is neither empty nor a name (nothing is
    /// sent), [`Error::ControlTimeout`] without an answer within the request timeout,
    /// [`Error::Closed`] or [`Error::Server`] when the connection closes first.
    pub async fn discover(&self, query: DiscoverQuery) -> Result<Vec<InstanceInfo>, Error> {
        control::discover(self, query).await
    }

    /// Why the client closed, as the error later calls get: `None` while it is open (also while
    /// it reconnects), e.g. [`Error::ReconnectFailed`] once reconnecting gave up.
    pub fn close_reason(&self) -> Option<Error> {
        if !self.inner.torn_down.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.inner
                .close_reason
                .get()
                .map_or(Error::Closed, CloseReason::to_error),
        )
    }

    /// A stream of what happens to the connection: drops, reconnects, server errors and the
    /// close (see [`ConnectionEvent`]). Opened while connected, it starts with
    /// [`ConnectionEvent::Connected`] for the current connection; it ends after
    /// [`ConnectionEvent::Closed`] (at once if the client is closed already).
    ///
    /// ```no_run
    /// # async fn example(client: agentwire_client::Client) {
    /// let mut events = client.events();
    /// tokio::spawn(async move {
    ///     while let Some(event) = events.next().await {
    ///         println!("connection: {event:?}");
    ///     }
    /// });
    /// # }
    /// ```
    pub fn events(&self) -> ConnectionEvents {
        let first = self.is_connected().then(|| ConnectionEvent::Connected {
            addr: lock(&self.inner.addr).clone(),
        });
        self.inner.events.listen(first)
    }

    /// Whether the connection is up: not closed, and not reconnecting after a drop.
    pub fn is_connected(&self) -> bool {
        !self.is_closed() && !self.inner.write.lock().disconnected
    }

    /// The fatal ERR that closed the connection, if the server closed it with one.
    pub fn fatal_error(&self) -> Option<ServerError> {
        match self.inner.close_reason.get() {
            Some(CloseReason::Server(e)) => Some(e.clone()),
            _ => None,
        }
    }
}
