"""The review page: `shoal review SESSION` serves a local web page to step through a tracking's frames
and correct its identities."""
