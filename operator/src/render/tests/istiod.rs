//! Render tests of the istiod component.

#[allow(unused_imports)]
use super::{find, render_spec};
