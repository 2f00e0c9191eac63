//! Render tests of the gateway component.

#[allow(unused_imports)]
use super::{find, render_spec};
