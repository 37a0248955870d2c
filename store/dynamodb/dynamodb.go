// Package dynamodb is an idempotency.Store on Amazon DynamoDB, for
// serverless deployments (AWS Lambda behind API Gateway, SQS consumers)
// where every instance shares one table and no server of its own.
//
// # Data model
//
// Each idempotency key is one item. In a dedicated table (the default) the
// table's only key is a partition key of type S (default name "pk") whose
// value is the idempotency key itself. In a table shared with other data
// (single-table design, Options.SortKey set) the table has a partition key
// and a sort key, both of type S; the store's items have the partition key
// Options.PartitionKeyPrefix + key and the constant sort key
// Options.SortKeyValue, so they never meet the table's other items. The
// item's other attributes are
//
//	fp     B  the request fingerprint (32 bytes)
//	st     N  1 in progress, 2 completed, 3 unknown outcome (held)
//	tok    S  the fencing token of the claim, in decimal
//	lease  N  lease end, Unix milliseconds (unknown: when it became unknown)
//	exp    N  logical expiry, Unix milliseconds
//	ttl    N  exp in Unix seconds plus one hour, for DynamoDB's TTL
//	resp   B  completed: the response, idempotency.MarshalResponse bytes
//	          (DEFLATE-compressed when renc is 1); in progress: one zero
//	          byte, which is never a valid encoding
//	renc   N  completed: 0 for plain, 1 for DEFLATE-compressed resp
//
// The TTL attribute (name set by Options.TTLAttribute) only lets DynamoDB
// delete dead items eventually; expiry is always decided from exp and the
// engine's clock, so an item that DynamoDB has not yet deleted is never
// replayed. The hour of slack keeps DynamoDB from deleting a live item when
// the engine's clock runs behind AWS's.
//
// # Atomicity, one request per operation
//
// Every operation is a single conditional write or a strongly consistent
// read on one item, so it is atomic against every other caller of the
// table, in any process:
//
//   - Claim is an UpdateItem that sets every attribute (overwriting any old
//     response) under the condition
//     attribute_not_exists(pk) OR exp <= :now OR (st = :inprog AND lease <= :now),
//     which is exactly idempotency.Record.Claimable. It asks for
//     ReturnValuesOnConditionCheckFailure ALL_OLD, so a blocked claim gets
//     the blocking item back in the same request: a replay costs one round
//     trip. A server that does not return the item (DynamoDB Local before
//     2023, dynalite) costs a second, strongly consistent GetItem; this is
//     detected per call, so nothing needs configuring.
//   - Renew, MarkUnknown and Complete are UpdateItems and Release is a
//     DeleteItem, each under the condition tok = :tok AND st = :inprog
//     (Complete and Release: st <> :done, so that they also resolve an
//     unknown item); a failed condition is idempotency.ErrFenced and
//     leaves the item untouched.
//   - Lookup is a strongly consistent GetItem; expiry is checked in code.
//
// The token is a string, not a number: DynamoDB's numbers would hold it
// exactly (38 digits), but emulators such as minidyn keep numbers as
// float64, where tokens above 2^53 collide and fencing would silently
// fail. String equality is exact everywhere. Times, below 2^53 ms, are
// numbers so that the claim condition can compare them.
//
// Claim uses UpdateItem rather than PutItem: on DynamoDB both are the same
// atomic conditional upsert at the same write cost, but minidyn returns the
// old item on a failed condition only for UpdateItem. A claim overwrites
// the old response with a zero byte rather than removing it because
// minidyn ignores REMOVE and refuses empty binary values.
//
// # Failures
//
// A DynamoDB error (a network failure, a missing table, a canceled
// context) is returned wrapped with the operation's name; the store adds
// no retries of its own to the SDK's retryer. Throttling
// (ProvisionedThroughputExceededException, ThrottlingException,
// RequestLimitExceeded and the SDK's other throttle codes) is retried by
// the SDK with its backoff; when the SDK gives up, the error is a
// *ThrottledError (errors.Is ErrThrottled) carrying the AWS error code as
// its Reason, for metrics. A throttled write changed nothing and is never
// read as a failed condition: a throttled Claim is an error, never a
// duplicate, and a throttled Complete or Release is an error, never
// idempotency.ErrFenced. A write whose condition failed changed nothing. A write whose
// answer was lost may or may not have been applied, as with any remote
// store: a claim applied that way blocks its key until its lease lapses,
// and a claim retried by the SDK after its first attempt was applied
// recognizes its own token and counts as claimed. An item that cannot be
// decoded is reported as an error, never treated as absent.
//
// # Size
//
// DynamoDB items are limited to 400 KB. Encoded responses over 4 KiB are
// stored DEFLATE-compressed when that makes them smaller (which also cuts
// write and read units); items written plain, by any version, read back
// unchanged. A response that still does not fit is stored without its
// body, with BodyOmitted set, so a retry is told the request ran (409,
// idempotency-response-not-stored) and is not executed a second time; configure
// the middleware's MaxStoredBody below about 400 KB to make that explicit.
// The budget is exact: 400 KB less a 512-byte reserve for the store's
// attributes, the key value (prefix included), the key attribute names and
// the TTL attribute name. Keys are limited to 2048 bytes by DynamoDB
// (levee's scoped keys are far shorter).
package dynamodb

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/leveehq/levee/idempotency"
)

// API is the part of the DynamoDB client the Store uses. *dynamodb.Client
// from github.com/aws/aws-sdk-go-v2/service/dynamodb implements it.
type API interface {
	GetItem(ctx context.Context, in *ddb.GetItemInput, optFns ...func(*ddb.Options)) (*ddb.GetItemOutput, error)
	UpdateItem(ctx context.Context, in *ddb.UpdateItemInput, optFns ...func(*ddb.Options)) (*ddb.UpdateItemOutput, error)
	DeleteItem(ctx context.Context, in *ddb.DeleteItemInput, optFns ...func(*ddb.Options)) (*ddb.DeleteItemOutput, error)
}

// Options configure a Store. Table is required; the zero value of every
// other field means its documented default.
type Options struct {
	// Table is the name of the DynamoDB table. Required. CreateTable
	// creates a suitable one.
	Table string
	// PartitionKey is the name of the table's partition key attribute, of
	// type S. Default "pk".
	PartitionKey string
	// PartitionKeyPrefix is prepended to every idempotency key to form the
	// partition key value, to keep the store's items apart from other data
	// in a shared table (for example "IDEMPOTENCY#"). Default "" (the key
	// itself). Changing it orphans the items already stored.
	PartitionKeyPrefix string
	// SortKey is the name of the table's sort key attribute, of type S,
	// for a table shared with other data (single-table design). Default ""
	// (a dedicated table with no sort key). The table's key schema must
	// match: a mismatch fails every operation with DynamoDB's
	// ValidationException.
	SortKey string
	// SortKeyValue is the sort key value of every item the store writes
	// when SortKey is set. Default "levee#idempotency". It must be empty
	// when SortKey is.
	SortKeyValue string
	// TTLAttribute is the attribute holding the item's deletion time in
	// Unix seconds, for DynamoDB's TTL clean-up (see CreateTable). Default
	// "ttl".
	TTLAttribute string
}

// Attribute names the store owns. Only the partition key and the TTL
// attribute are part of the table's configuration, so only they are
// configurable.
const (
	attrFP    = "fp"
	attrState = "st"
	attrToken = "tok"
	attrLease = "lease"
	attrExp   = "exp"
	attrResp  = "resp"
	attrEnc   = "renc"
)

const (
	// ttlSlack is added to the logical expiry for DynamoDB's TTL.
	ttlSlack = time.Hour
	// maxItemBytes is DynamoDB's item size limit.
	maxItemBytes = 400 * 1024
	// itemReserve bounds the size of every attribute but the key and the
	// response (names included), with room to spare.
	itemReserve = 512
	// compressAbove is the encoded response size above which the store
	// tries DEFLATE.
	compressAbove = 4 << 10
)

// Values of the renc attribute.
const (
	encPlain   = 0
	encDeflate = 1
)

func (o *Options) setDefaults() error {
	if o.Table == "" {
		return errors.New("dynamodb: Options.Table is required")
	}
	if o.PartitionKey == "" {
		o.PartitionKey = "pk"
	}
	if o.TTLAttribute == "" {
		o.TTLAttribute = "ttl"
	}
	switch {
	case o.SortKey == "" && o.SortKeyValue != "":
		return errors.New("dynamodb: Options.SortKeyValue is set but Options.SortKey is not")
	case o.SortKey != "" && o.SortKeyValue == "":
		o.SortKeyValue = "levee#idempotency"
	}
	owned := []string{attrFP, attrState, attrToken, attrLease, attrExp, attrResp, attrEnc}
	for _, a := range owned {
		if o.PartitionKey == a {
			return fmt.Errorf("dynamodb: Options.PartitionKey %q is an attribute the store uses itself", a)
		}
		if o.SortKey == a {
			return fmt.Errorf("dynamodb: Options.SortKey %q is an attribute the store uses itself", a)
		}
		if o.TTLAttribute == a {
			return fmt.Errorf("dynamodb: Options.TTLAttribute %q is an attribute the store uses itself", a)
		}
	}
	if o.PartitionKey == o.TTLAttribute {
		return fmt.Errorf("dynamodb: Options.TTLAttribute %q is the partition key", o.TTLAttribute)
	}
	if o.SortKey != "" && (o.SortKey == o.PartitionKey || o.SortKey == o.TTLAttribute) {
		return fmt.Errorf("dynamodb: Options.SortKey %q is the partition key or the TTL attribute", o.SortKey)
	}
	return nil
}

// Store is an idempotency.Store on one DynamoDB table. It is safe for
// concurrent use.
type Store struct {
	api  API
	opts Options

	// Expression attribute names per operation: DynamoDB refuses names an
	// expression does not use. Read-only after New.
	claimNames, renewNames, completeNames, fenceNames map[string]string

	writers sync.Pool // *flate.Writer
}

// Expressions. Attribute names always go through placeholders, since the
// configurable ones may be reserved words ("ttl" is).
const (
	claimUpdate    = "SET #fp = :fp, #st = :inprog, #tok = :tok, #lease = :lease, #exp = :exp, #ttl = :ttl, #resp = :none"
	claimCond      = "attribute_not_exists(#pk) OR #exp <= :now OR (#st = :inprog AND #lease <= :now)"
	fenceCond      = "#tok = :tok AND #st = :inprog"
	openCond       = "#tok = :tok AND #st <> :done"
	renewUpdate    = "SET #lease = :lease, #exp = :exp, #ttl = :ttl"
	unknownUpdate  = "SET #st = :unknown, #lease = :lease, #exp = :exp, #ttl = :ttl"
	completeUpdate = "SET #st = :done, #exp = :exp, #ttl = :ttl, #resp = :resp, #renc = :renc"
)

// New returns a Store over the table opts.Table, which must exist (see
// CreateTable). It makes no request.
func New(client API, opts Options) (*Store, error) {
	if client == nil {
		return nil, errors.New("dynamodb: client is nil")
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	return &Store{
		api:  client,
		opts: opts,
		claimNames: map[string]string{
			"#pk": opts.PartitionKey, "#fp": attrFP, "#st": attrState, "#tok": attrToken,
			"#lease": attrLease, "#exp": attrExp, "#ttl": opts.TTLAttribute, "#resp": attrResp,
		},
		renewNames: map[string]string{"#tok": attrToken, "#st": attrState, "#lease": attrLease, "#exp": attrExp, "#ttl": opts.TTLAttribute},
		completeNames: map[string]string{
			"#tok": attrToken, "#st": attrState, "#exp": attrExp, "#ttl": opts.TTLAttribute,
			"#resp": attrResp, "#renc": attrEnc,
		},
		fenceNames: map[string]string{"#tok": attrToken, "#st": attrState},
	}, nil
}

func (s *Store) key(key string) map[string]types.AttributeValue {
	k := map[string]types.AttributeValue{s.opts.PartitionKey: &types.AttributeValueMemberS{Value: s.opts.PartitionKeyPrefix + key}}
	if s.opts.SortKey != "" {
		k[s.opts.SortKey] = &types.AttributeValueMemberS{Value: s.opts.SortKeyValue}
	}
	return k
}

func num(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}

func millis(t time.Time) types.AttributeValue { return num(t.UnixMilli()) }

// tokenValue is the fencing token as a decimal string (type S, not N; see
// the package documentation).
func tokenValue(tok uint64) types.AttributeValue {
	return &types.AttributeValueMemberS{Value: strconv.FormatUint(tok, 10)}
}

// ttlValue is exp in Unix seconds, rounded up, plus ttlSlack.
func ttlValue(exp time.Time) types.AttributeValue {
	sec := exp.Add(ttlSlack).Unix()
	if exp.Nanosecond() != 0 {
		sec++
	}
	return num(sec)
}

func inProgress() types.AttributeValue { return num(int64(idempotency.StateInProgress)) }
func completed() types.AttributeValue  { return num(int64(idempotency.StateCompleted)) }
func unknown() types.AttributeValue    { return num(int64(idempotency.StateUnknown)) }

func isConditionFailed(err error) (*types.ConditionalCheckFailedException, bool) {
	var ccf *types.ConditionalCheckFailedException
	ok := errors.As(err, &ccf)
	return ccf, ok
}

// Claim implements idempotency.Store with one conditional UpdateItem; see
// the package documentation.
func (s *Store) Claim(ctx context.Context, req idempotency.ClaimRequest) (idempotency.ClaimResult, error) {
	_, err := s.api.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName:                aws.String(s.opts.Table),
		Key:                      s.key(req.Key),
		UpdateExpression:         aws.String(claimUpdate),
		ConditionExpression:      aws.String(claimCond),
		ExpressionAttributeNames: s.claimNames,
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":fp":     &types.AttributeValueMemberB{Value: req.Fingerprint[:]},
			":inprog": inProgress(),
			":tok":    tokenValue(req.Token),
			":lease":  millis(req.LeaseUntil),
			":exp":    millis(req.ExpiresAt),
			":ttl":    ttlValue(req.ExpiresAt),
			":now":    millis(req.Now),
			":none":   &types.AttributeValueMemberB{Value: []byte{0}},
		},
		ReturnValuesOnConditionCheckFailure: types.ReturnValuesOnConditionCheckFailureAllOld,
	})
	if err == nil {
		return idempotency.ClaimResult{Claimed: true}, nil
	}
	ccf, ok := isConditionFailed(err)
	if !ok {
		return idempotency.ClaimResult{}, wrap("claim", err)
	}
	if len(ccf.Item) > 0 {
		// The item that failed the condition, from the same request: it is
		// live and not claimable at req.Now by construction.
		rec, err := s.decode(req.Key, ccf.Item)
		if err != nil {
			return idempotency.ClaimResult{}, err
		}
		return blocked(rec, req), nil
	}
	// The server did not return the old item: read it. It may have changed
	// since the condition failed; if it is gone or no longer blocks a claim
	// at req.Now, report no record so that the engine claims again.
	rec, err := s.get(ctx, req.Key)
	if err != nil {
		return idempotency.ClaimResult{}, wrap("claim: reading the blocking record", err)
	}
	if rec == nil || rec.Claimable(req.Now) {
		return idempotency.ClaimResult{}, nil
	}
	return blocked(rec, req), nil
}

// blocked is the result of a claim whose condition failed on rec. If rec
// holds req's own token, the SDK retried a claim whose first attempt was
// applied but whose answer was lost: tokens are unique per claim, so the
// claim is ours.
func blocked(rec *idempotency.Record, req idempotency.ClaimRequest) idempotency.ClaimResult {
	if rec.Token == req.Token && rec.State == idempotency.StateInProgress {
		return idempotency.ClaimResult{Claimed: true}
	}
	return idempotency.ClaimResult{Existing: rec}
}

// Renew implements idempotency.Store with one conditional UpdateItem.
func (s *Store) Renew(ctx context.Context, key string, token uint64, _, leaseUntil, expiresAt time.Time) error {
	_, err := s.api.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName:                aws.String(s.opts.Table),
		Key:                      s.key(key),
		UpdateExpression:         aws.String(renewUpdate),
		ConditionExpression:      aws.String(fenceCond),
		ExpressionAttributeNames: s.renewNames,
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":tok": tokenValue(token), ":inprog": inProgress(), ":lease": millis(leaseUntil),
			":exp": millis(expiresAt), ":ttl": ttlValue(expiresAt),
		},
	})
	return fenced("renew", err)
}

// Complete implements idempotency.Store with one conditional UpdateItem.
// See the package documentation for responses too large for one item.
func (s *Store) Complete(ctx context.Context, key string, token uint64, resp idempotency.Response, _, expiresAt time.Time) error {
	b, compressed, err := s.encodeResponse(key, resp)
	if err != nil {
		return err
	}
	enc := num(encPlain)
	if compressed {
		enc = num(encDeflate)
	}
	_, err = s.api.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName:                aws.String(s.opts.Table),
		Key:                      s.key(key),
		UpdateExpression:         aws.String(completeUpdate),
		ConditionExpression:      aws.String(openCond),
		ExpressionAttributeNames: s.completeNames,
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":tok": tokenValue(token), ":done": completed(),
			":exp": millis(expiresAt), ":ttl": ttlValue(expiresAt),
			":resp": &types.AttributeValueMemberB{Value: b}, ":renc": enc,
		},
	})
	return fenced("complete", err)
}

// Release implements idempotency.Store with one conditional DeleteItem.
func (s *Store) Release(ctx context.Context, key string, token uint64) error {
	_, err := s.api.DeleteItem(ctx, &ddb.DeleteItemInput{
		TableName:                aws.String(s.opts.Table),
		Key:                      s.key(key),
		ConditionExpression:      aws.String(openCond),
		ExpressionAttributeNames: s.fenceNames,
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":tok": tokenValue(token), ":done": completed(),
		},
	})
	return fenced("release", err)
}

// MarkUnknown implements idempotency.Store with one conditional
// UpdateItem.
func (s *Store) MarkUnknown(ctx context.Context, key string, token uint64, now, expiresAt time.Time) error {
	_, err := s.api.UpdateItem(ctx, &ddb.UpdateItemInput{
		TableName:                aws.String(s.opts.Table),
		Key:                      s.key(key),
		UpdateExpression:         aws.String(unknownUpdate),
		ConditionExpression:      aws.String(fenceCond),
		ExpressionAttributeNames: s.renewNames,
		ExpressionAttributeValues: map[string]types.AttributeValue{
			":tok": tokenValue(token), ":inprog": inProgress(), ":unknown": unknown(), ":lease": millis(now),
			":exp": millis(expiresAt), ":ttl": ttlValue(expiresAt),
		},
	})
	return fenced("mark unknown", err)
}

// Features implements idempotency.Store: the store cannot list (see List).
func (s *Store) Features() idempotency.Features { return idempotency.Features{} }

// List implements idempotency.Store by returning
// idempotency.ErrListUnsupported. The table has one partition key and no
// index by state: finding the held keys would be a Scan, which reads (and
// bills read capacity for) every item in the table, completed ones
// included, and competes with request traffic for the table's throughput;
// a sparse global secondary index would add a second, eventually
// consistent write to every claim and a table change to every deployment.
// Held keys are announced by the unknown-outcome event and its WARN log,
// which carry the scoped key for Inspect and Resolve.
func (s *Store) List(context.Context, idempotency.ListRequest) ([]idempotency.Record, error) {
	return nil, idempotency.ErrListUnsupported
}

// fenced maps a failed fencing condition to idempotency.ErrFenced.
func fenced(op string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := isConditionFailed(err); ok {
		return idempotency.ErrFenced
	}
	return wrap(op, err)
}

// Lookup implements idempotency.Store with one strongly consistent
// GetItem.
func (s *Store) Lookup(ctx context.Context, key string, now time.Time) (*idempotency.Record, error) {
	rec, err := s.get(ctx, key)
	if err != nil {
		return nil, wrap("lookup", err)
	}
	if rec == nil || !now.Before(rec.ExpiresAt) {
		return nil, idempotency.ErrNotFound
	}
	return rec, nil
}

// get reads key's item with a strongly consistent read; nil if absent.
func (s *Store) get(ctx context.Context, key string) (*idempotency.Record, error) {
	out, err := s.api.GetItem(ctx, &ddb.GetItemInput{
		TableName:      aws.String(s.opts.Table),
		Key:            s.key(key),
		ConsistentRead: aws.Bool(true),
	})
	if err != nil {
		return nil, err
	}
	if len(out.Item) == 0 {
		return nil, nil
	}
	return s.decode(key, out.Item)
}

// encodeResponse returns the bytes to store for resp and whether they are
// compressed, degrading to a body-less response if it cannot fit the item.
func (s *Store) encodeResponse(key string, resp idempotency.Response) ([]byte, bool, error) {
	budget := maxItemBytes - itemReserve - len(s.opts.PartitionKeyPrefix) - len(key) - len(s.opts.PartitionKey) -
		len(s.opts.SortKey) - len(s.opts.SortKeyValue) - len(s.opts.TTLAttribute)
	enc := idempotency.MarshalResponse(resp)
	compressed := false
	if len(enc) > compressAbove {
		if z := s.deflate(enc); len(z) < len(enc) {
			enc, compressed = z, true
		}
	}
	if len(enc) <= budget {
		return enc, compressed, nil
	}
	// Too large for one item even compressed. The request did execute:
	// keep status and headers and mark the body as not stored, so a retry
	// is answered rather than executed again.
	resp.Body, resp.BodyOmitted = nil, true
	enc = idempotency.MarshalResponse(resp)
	if len(enc) > budget {
		return nil, false, fmt.Errorf("dynamodb: complete: response headers alone take %d bytes, more than a DynamoDB item holds", len(enc))
	}
	return enc, false, nil
}

func (s *Store) deflate(b []byte) []byte {
	var buf bytes.Buffer
	buf.Grow(len(b) / 2)
	w, _ := s.writers.Get().(*flate.Writer)
	if w == nil {
		w, _ = flate.NewWriter(&buf, flate.BestSpeed) // the level is valid: no error
	} else {
		w.Reset(&buf)
	}
	_, _ = w.Write(b) // writes to a bytes.Buffer cannot fail
	_ = w.Close()
	s.writers.Put(w)
	return buf.Bytes()
}

func inflate(b []byte) ([]byte, error) {
	r := flate.NewReader(bytes.NewReader(b))
	defer r.Close()
	return io.ReadAll(r)
}

// decode turns an item into a Record.
func (s *Store) decode(key string, item map[string]types.AttributeValue) (*idempotency.Record, error) {
	d := decoder{item: item}
	rec := &idempotency.Record{Key: key}
	if fp := d.bytes(attrFP); d.err == nil {
		if len(fp) != len(rec.Fingerprint) {
			d.fail(attrFP, fmt.Errorf("%d bytes, want %d", len(fp), len(rec.Fingerprint)))
		}
		copy(rec.Fingerprint[:], fp)
	}
	rec.State = idempotency.State(d.uint(attrState))
	rec.Token = d.token(attrToken)
	rec.LeaseUntil = time.UnixMilli(d.int(attrLease)).UTC()
	rec.ExpiresAt = time.UnixMilli(d.int(attrExp)).UTC()
	if d.err == nil && rec.State != idempotency.StateInProgress && rec.State != idempotency.StateCompleted && rec.State != idempotency.StateUnknown {
		d.fail(attrState, fmt.Errorf("unknown state %d", rec.State))
	}
	if d.err == nil && rec.State == idempotency.StateCompleted {
		raw := d.bytes(attrResp)
		switch enc := d.int(attrEnc); {
		case d.err != nil:
		case enc == encDeflate:
			var err error
			if raw, err = inflate(raw); err != nil {
				d.fail(attrResp, err)
			}
		case enc != encPlain:
			d.fail(attrEnc, fmt.Errorf("unknown encoding %d", enc))
		}
		if d.err == nil {
			r, err := idempotency.UnmarshalResponse(raw)
			if err != nil {
				d.fail(attrResp, err)
			}
			rec.Response = &r
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("dynamodb: corrupt item for key %q: %w", key, d.err)
	}
	return rec, nil
}

// decoder reads typed attributes, keeping the first error.
type decoder struct {
	item map[string]types.AttributeValue
	err  error
}

func (d *decoder) fail(name string, err error) {
	if d.err == nil {
		d.err = fmt.Errorf("attribute %s: %w", name, err)
	}
}

func (d *decoder) bytes(name string) []byte {
	if d.err != nil {
		return nil
	}
	v, ok := d.item[name].(*types.AttributeValueMemberB)
	if !ok {
		d.fail(name, errors.New("missing or not of type B"))
		return nil
	}
	return v.Value
}

func (d *decoder) number(name string) string {
	if d.err != nil {
		return ""
	}
	v, ok := d.item[name].(*types.AttributeValueMemberN)
	if !ok {
		d.fail(name, errors.New("missing or not of type N"))
		return ""
	}
	return v.Value
}

func (d *decoder) uint(name string) uint64 {
	s := d.number(name)
	if d.err != nil {
		return 0
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		d.fail(name, err)
	}
	return n
}

func (d *decoder) token(name string) uint64 {
	if d.err != nil {
		return 0
	}
	v, ok := d.item[name].(*types.AttributeValueMemberS)
	if !ok {
		d.fail(name, errors.New("missing or not of type S"))
		return 0
	}
	n, err := strconv.ParseUint(v.Value, 10, 64)
	if err != nil {
		d.fail(name, err)
	}
	return n
}

func (d *decoder) int(name string) int64 {
	s := d.number(name)
	if d.err != nil {
		return 0
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		d.fail(name, err)
	}
	return n
}
