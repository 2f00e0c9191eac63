//! Render tests of the base component.

#[allow(unused_imports)]
use super::{find, render_spec};
