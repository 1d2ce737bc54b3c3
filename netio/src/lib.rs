//! tapwire-netio (being written).
