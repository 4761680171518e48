//! Number routing (OpenSIPS `dialplan` and `drouting`): translation rules per dialplan id,
//! and prefix routing to carrier gateways. Sans-IO tables built once per reload; what to do
//! with a number per kind of source is the routing configuration's (issue 13).

pub mod dialplan;
pub mod drouting;
pub mod routing;
