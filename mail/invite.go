package mail

// Invite is what an invite email says. Every field comes from the inviter's
// homeserver request (except Link, built by mxid from its own configuration),
// so templates must treat them as untrusted: escaped in HTML, never in a
// header but through encoding.
type Invite struct {
	To                string // the invited address, as given
	RoomID            string
	RoomName          string // truncated by the caller
	RoomAlias         string
	RoomAvatarURL     string
	RoomType          string // "space" or "room"
	SenderID          string // the verified sender MXID
	SenderDisplayName string // truncated by the caller
	SenderAvatarURL   string
	Link              string // where "join" points: the web client with the invite parameters
	ServerName        string
}
