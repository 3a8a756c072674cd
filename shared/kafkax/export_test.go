package kafkax

import "github.com/segmentio/kafka-go"

// NewMetadataCache exposes the writers' metadata cache to the external tests.
func NewMetadataCache(next kafka.RoundTripper) kafka.RoundTripper { return newMetadataCache(next) }
