//! xDS client (placeholder)
