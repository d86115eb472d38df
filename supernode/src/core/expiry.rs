//! Session certificates over time: a joined session ends when its
//! certificate expires, unless a `CertificateRenewal` for the same name and
//! keys moved the expiry (docs/PROTOCOL.md, section 8.2).

use super::interface::SessionId;
use super::state::{Node, Timer};

impl Node {
    /// Arms the timer that ends session `id` when its certificate expires.
    pub(crate) fn arm_expiry(&mut self, id: SessionId, not_after: i64) {
        let left = u64::try_from(not_after.saturating_sub(self.now.unix_secs())).unwrap_or(0);
        let at = self.now.mono + std::time::Duration::from_secs(left);
        self.set_timer(at, Timer::CertificateExpiry(id));
    }

    /// The expiry timer of session `id` fired: the session ends unless a
    /// renewal moved its expiry (then the timer is armed again).
    pub(crate) fn certificate_due(&mut self, id: SessionId) {
        let Some(not_after) = self
            .sessions
            .all
            .get(&id)
            .and_then(|s| s.keys.as_ref())
            .map(|c| c.not_after)
        else {
            return;
        };
        if not_after > self.now.unix_secs() {
            return self.arm_expiry(id, not_after);
        }
        tracing::info!("session certificate expired, closing");
        self.stats.sessions_expired += 1;
        self.session_closed(id);
        self.emit(crate::core::Output::CloseSession(
            id,
            crate::close::REFUSED,
            "certificate expired",
        ));
    }

    /// A `CertificateRenewal` on joined session `id`: a valid certificate
    /// for the same name and the same keys moves the session's expiry
    /// (answered `Ack`); anything else is refused and changes nothing.
    pub(crate) fn renew_certificate(
        &mut self,
        id: SessionId,
        request_id: u64,
        renewal: natter_proto::messages::CertificateRenewal,
    ) {
        use natter_proto::messages::{ErrorCode, ErrorReply, envelope::Body};
        let now = self.now.unix_secs();
        let verified = renewal
            .certificate
            .as_ref()
            .ok_or_else(|| "no certificate".to_owned())
            .and_then(|c| {
                natter_proto::cert::verify(c, &self.config.login_key, now)
                    .map_err(|e| e.to_string())
            });
        let Some(session) = self.sessions.all.get_mut(&id) else {
            return;
        };
        let joined_as = session.joined().map(|j| j.name.clone());
        let renewed = renewal.certificate.clone();
        let result = match (verified, session.keys.as_mut(), joined_as) {
            (Ok(v), Some(held), Some(name))
                if natter_proto::name::normalise(&v.name).ok().as_deref()
                    == Some(name.as_str())
                    && v.public_key == held.public_key
                    && v.chat_key == held.chat_key =>
            {
                held.not_after = held.not_after.max(v.not_after);
                // The session's records carry the certificate in force.
                if let (Some(joined), Some(certificate)) = (session.joined_mut(), renewed) {
                    joined.signed.certificate = certificate;
                }
                Ok(())
            }
            (Ok(_), _, _) => Err("the certificate is for another name or key".to_owned()),
            (Err(e), _, _) => Err(e),
        };
        let body = match result {
            Ok(()) => Body::Ack(Default::default()),
            Err(e) => Body::Error(ErrorReply::new(ErrorCode::CertificateRejected, e)),
        };
        self.send_session(id, request_id, body);
    }
}
