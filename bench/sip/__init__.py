"""The SIP benchmark: call set-ups per second (SIPp as the caller) and concurrent calls
with RTP held without loss (the echo kit's load generator in its RTP mode)."""
