"""The pages people use — wall display, staff console, customer ticket page — served by the API server.

Static HTML, CSS and plain JavaScript (no build step): the pages call the public API with the key the user
gave (kept in the browser, never in a URL the server sees) and follow the event stream.
"""
