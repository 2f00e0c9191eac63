//! Render tests of the ztunnel component.

#[allow(unused_imports)]
use super::{find, render_spec};
