"""Input and output: Kafka topics and clients (`kafka`), the local development broker (`broker`),
the SSRF-guarded outbound HTTP client every fetch and webhook goes through (`net`), and the small
aiohttp servers facestream runs (`http`)."""
