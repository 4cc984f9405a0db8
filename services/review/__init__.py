"""Human review: every match is a candidate list until two reviewers confirm a candidate (or one
rejects it); the board, the commands, the API operations and the review page."""
