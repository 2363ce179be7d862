"""The web console: a page of ES modules served as they are (no build step), with its
third-party JavaScript vendored under `console/web/vendor/` (see `vendor_sync`)."""
