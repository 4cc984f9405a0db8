"""Operations: structured JSON logs (`logs`), Prometheus metrics (`metrics`), consumer lag read
from the broker (`lag`), and each worker's operations endpoint with its dashboard (`server`)."""
