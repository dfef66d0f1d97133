package swift

// SetTokenForTest replaces b's token, as if it had expired.
func SetTokenForTest(b *Backend, token string) { b.client.SetToken(token) }
