//! Mesh PKI tooling (CA, SPIFFE workload certs); filled in by the mTLS issue.
#![forbid(unsafe_code)]
