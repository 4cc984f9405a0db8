"""The audit log: entries every part writes, chained and signed by one sequencer, verified and
searched from the command line and the API."""
