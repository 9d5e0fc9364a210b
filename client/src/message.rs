//! Messages: [`Message`] as received, [`OutboundMessage`] as published.

use bytes::Bytes;

use crate::headers::Headers;
use crate::subject::Subject;

/// A message delivered to a subscription or as a reply to a request.
///
/// Every field is a view into the bytes the client read from the socket: receiving a message
/// copies nothing. Holding a message keeps the read chunk it came from alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published on.
    pub subject: Subject,
    /// Where the publisher wants replies, if anywhere.
    pub reply: Option<Subject>,
    /// Headers, if the publisher sent any.
    pub headers: Option<Headers>,
    /// The payload.
    pub payload: Bytes,
}

/// A message to publish with every optional part: subject, reply, headers and payload.
///
/// Built with [`OutboundMessage::new`] and the builder methods, sent with
/// [`crate::Client::publish_message`]. It borrows everything: the client copies it into its
/// write buffer.
///
/// ```
/// use agentwire_client::{Headers, OutboundMessage};
/// let mut headers = Headers::new();
/// headers.insert("Content-Type", "application/json").expect("valid header");
/// let msg = OutboundMessage::new("orders.created", br#"{"id":7}"#)
///     .reply("orders.acks")
///     .headers(&headers);
/// assert_eq!(msg.subject, "orders.created");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct OutboundMessage<'a> {
    /// The literal subject to publish on.
    pub subject: &'a str,
    /// A literal reply subject, if any.
    pub reply: Option<&'a str>,
    /// Headers, if any.
    pub headers: Option<&'a Headers>,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> OutboundMessage<'a> {
    /// A message with a subject and payload, no reply and no headers.
    pub fn new(subject: &'a str, payload: &'a [u8]) -> OutboundMessage<'a> {
        OutboundMessage {
            subject,
            reply: None,
            headers: None,
            payload,
        }
    }

    /// Sets the reply subject.
    pub fn reply(mut self, reply: &'a str) -> OutboundMessage<'a> {
        self.reply = Some(reply);
        self
    }

    /// Sets the headers.
    pub fn headers(mut self, headers: &'a Headers) -> OutboundMessage<'a> {
        self.headers = Some(headers);
        self
    }
}
