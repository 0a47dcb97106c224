//! The gate's outbound link to nodes (deliver and trigger frames over drpc).
//! The codec is [`crate::drpc`]; the inbound node API is [`crate::node_api`].

pub mod client;
