//! The real credential an inspected request carries upstream: the secret,
//! where it is read from, the header it goes in, and placeholder swapping.
