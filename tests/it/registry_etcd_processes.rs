//! The etcd registry under real OS processes on a real 3-member cluster (being written).
