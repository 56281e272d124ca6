//! hostnet::nft (work in progress).
