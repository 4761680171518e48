//! Nothing: the test below is the point.
