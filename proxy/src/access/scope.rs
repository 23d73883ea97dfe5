//! A grant's request scopes (`--allow 'GET /v1/payments/*'`): parsing, the
//! path normal form they are matched against, and the matcher.
