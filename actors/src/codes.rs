//! Error codes: the stable, machine-readable `code` of every error a client can get, in a
//! REST error body (`{"error": {"code", "message"}}`, docs/api.md) or a WebSocket `error`
//! frame (docs/protocol.md). One enum for both, so a misspelt code does not compile, and
//! a test checks that the documentation lists each one.

crate::text_enum! {
    /// The `code` of an error response or `error` frame.
    ErrorCode {
        // The request as a whole.
        /// Malformed request the server cannot say more about.
        BadRequest = "bad_request",
        /// The body (or a frame) is not JSON, nests too deep or holds an out-of-range number.
        InvalidJson = "invalid_json",
        /// A query parameter is missing, malformed or out of range.
        InvalidQuery = "invalid_query",
        /// A header is malformed.
        InvalidHeader = "invalid_header",
        /// The body is over the route's limit.
        PayloadTooLarge = "payload_too_large",
        /// The body is not `application/json`.
        UnsupportedMediaType = "unsupported_media_type",
        /// The method is not allowed on this path.
        MethodNotAllowed = "method_not_allowed",
        /// The WebSocket handshake is malformed.
        BadUpgrade = "bad_upgrade",
        /// A cross-site request to a cookie-authenticated route.
        CrossSiteRequest = "cross_site_request",
        /// The CSRF token is missing or does not match its cookie.
        CsrfTokenInvalid = "csrf_token_invalid",
        /// A WebSocket from an origin that is not allowed.
        OriginNotAllowed = "origin_not_allowed",

        // Identity.
        /// No token, or an invalid, expired or revoked one.
        InvalidToken = "invalid_token",
        /// Wrong username or password.
        InvalidCredentials = "invalid_credentials",
        /// The username is taken.
        UsernameTaken = "username_taken",
        /// A username outside the rules.
        InvalidUsername = "invalid_username",
        /// A password outside the length limits.
        InvalidPassword = "invalid_password",
        /// A display name outside the rules.
        InvalidDisplayName = "invalid_display_name",
        /// The login that opened the socket was logged out.
        SessionRevoked = "session_revoked",
        /// An operator disabled the account.
        AccountDisabled = "account_disabled",

        // Things and permissions.
        /// No such thing, or the caller may not know it exists.
        NotFound = "not_found",
        /// The caller may not do this.
        Forbidden = "forbidden",
        /// The request conflicts with the current state.
        Conflict = "conflict",
        /// Too many requests or frames; retry later.
        RateLimited = "rate_limited",
        /// The user has as many sockets open on this node as allowed.
        TooManyConnections = "too_many_connections",

        // WebSocket frames.
        /// A frame of the wrong shape.
        InvalidFrame = "invalid_frame",
        /// A frame `type` the server does not know.
        UnknownType = "unknown_type",
        /// A binary frame.
        BinaryNotSupported = "binary_not_supported",
        /// A `client_msg_id` that is empty, too long or holds control characters.
        InvalidClientMsgId = "invalid_client_msg_id",
        /// A blank message body.
        EmptyBody = "empty_body",
        /// A message body over the limit.
        BodyTooLarge = "body_too_large",
        /// A message body holding a NUL character.
        InvalidBody = "invalid_body",
        /// A mute's end that is past or more than a year ahead.
        InvalidUntil = "invalid_until",
        /// A message to oneself.
        InvalidRecipient = "invalid_recipient",
        /// The commit was not confirmed (an actor restarted); resend.
        NotAcknowledged = "not_acknowledged",

        // Files.
        /// A file name outside the rules.
        InvalidName = "invalid_name",
        /// A file size outside the limits.
        InvalidSize = "invalid_size",
        /// A chunk index outside the transfer.
        InvalidIndex = "invalid_index",
        /// A chunk of the wrong size.
        InvalidChunk = "invalid_chunk",
        /// A SHA-256 that is not 64 hexadecimal digits.
        InvalidSha256 = "invalid_sha256",
        /// A download `Range` outside the file.
        RangeNotSatisfiable = "range_not_satisfiable",
        /// A chunk whose bytes do not match its hash.
        ChunkHashMismatch = "chunk_hash_mismatch",
        /// The transfer is complete or failed.
        TransferClosed = "transfer_closed",
        /// A file that is not an image (by its bytes) or whose pixels did not decode
        /// within the limits has no thumbnail.
        NoThumbnail = "no_thumbnail",
        /// The user has as many uploads in progress as allowed.
        TooManyTransfers = "too_many_transfers",
        /// The upload would pass the user's storage quota.
        QuotaExceeded = "quota_exceeded",

        // Operations.
        /// An unknown actor kind for fault injection.
        InvalidKind = "invalid_kind",
        /// An unknown fault for fault injection.
        InvalidFault = "invalid_fault",

        // The server.
        /// A dependency (database, broker, a conversation) is unavailable; retry later.
        Unavailable = "unavailable",
        /// The gateway has no healthy instance of the service.
        ServiceUnavailable = "service_unavailable",
        /// The service behind the gateway failed to answer.
        BadGateway = "bad_gateway",
        /// The service behind the gateway answered too late.
        GatewayTimeout = "gateway_timeout",
        /// A failure inside the server (details in its log).
        Internal = "internal",
        /// Any other error status.
        Error = "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_and_serialise_as_their_text() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(text.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{text}");
            assert_eq!(serde_json::to_string(code).expect("serialises"), format!("\"{text}\""));
        }
    }
}
