package dynamodb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	ddb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"
)

// TableAPI is the part of the DynamoDB client CreateTable uses.
// *dynamodb.Client implements it.
type TableAPI interface {
	CreateTable(ctx context.Context, in *ddb.CreateTableInput, optFns ...func(*ddb.Options)) (*ddb.CreateTableOutput, error)
	DescribeTable(ctx context.Context, in *ddb.DescribeTableInput, optFns ...func(*ddb.Options)) (*ddb.DescribeTableOutput, error)
	DescribeTimeToLive(ctx context.Context, in *ddb.DescribeTimeToLiveInput, optFns ...func(*ddb.Options)) (*ddb.DescribeTimeToLiveOutput, error)
	UpdateTimeToLive(ctx context.Context, in *ddb.UpdateTimeToLiveInput, optFns ...func(*ddb.Options)) (*ddb.UpdateTimeToLiveOutput, error)
}

// CreateTable creates the table described by opts (on-demand capacity,
// partition key opts.PartitionKey of type S, and the sort key
// opts.SortKey of type S if set, else none), waits until it
// is ACTIVE, and enables DynamoDB's TTL on opts.TTLAttribute. It is
// idempotent: an existing table is accepted if its key schema matches, and
// TTL already enabled on that attribute is left alone.
//
// TTL is only a clean-up aid (expiry is logical), so a server without the
// TTL API, such as an emulator, is tolerated; TTL already enabled on
// another attribute is an error, because DynamoDB allows only one per table
// and items would then never be cleaned up. Waiting is bounded by ctx
// only: give it a deadline.
func CreateTable(ctx context.Context, client TableAPI, opts Options) error {
	if client == nil {
		return errors.New("dynamodb: client is nil")
	}
	if err := opts.setDefaults(); err != nil {
		return err
	}
	attrs := []types.AttributeDefinition{{AttributeName: aws.String(opts.PartitionKey), AttributeType: types.ScalarAttributeTypeS}}
	schema := []types.KeySchemaElement{{AttributeName: aws.String(opts.PartitionKey), KeyType: types.KeyTypeHash}}
	if opts.SortKey != "" {
		attrs = append(attrs, types.AttributeDefinition{AttributeName: aws.String(opts.SortKey), AttributeType: types.ScalarAttributeTypeS})
		schema = append(schema, types.KeySchemaElement{AttributeName: aws.String(opts.SortKey), KeyType: types.KeyTypeRange})
	}
	_, err := client.CreateTable(ctx, &ddb.CreateTableInput{
		TableName:            aws.String(opts.Table),
		BillingMode:          types.BillingModePayPerRequest,
		AttributeDefinitions: attrs,
		KeySchema:            schema,
	})
	var inUse *types.ResourceInUseException
	if err != nil && !errors.As(err, &inUse) {
		return fmt.Errorf("dynamodb: create table %q: %w", opts.Table, err)
	}
	desc, err := waitActive(ctx, client, opts.Table)
	if err != nil {
		return err
	}
	if err := checkSchema(desc, opts); err != nil {
		return err
	}
	return enableTTL(ctx, client, opts)
}

// waitActive polls DescribeTable until the table is ACTIVE.
func waitActive(ctx context.Context, client TableAPI, table string) (*types.TableDescription, error) {
	delay := 100 * time.Millisecond
	for {
		out, err := client.DescribeTable(ctx, &ddb.DescribeTableInput{TableName: aws.String(table)})
		var notFound *types.ResourceNotFoundException
		switch {
		case errors.As(err, &notFound):
			// Not yet visible (eventually consistent control plane): wait.
		case err != nil:
			return nil, fmt.Errorf("dynamodb: describe table %q: %w", table, err)
		case out.Table == nil:
			return nil, fmt.Errorf("dynamodb: describe table %q: empty description", table)
		case out.Table.TableStatus == types.TableStatusActive || out.Table.TableStatus == "":
			// An empty status: the server (minidyn) does not report one.
			return out.Table, nil
		case out.Table.TableStatus != types.TableStatusCreating && out.Table.TableStatus != types.TableStatusUpdating:
			return nil, fmt.Errorf("dynamodb: table %q is %s", table, out.Table.TableStatus)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("dynamodb: waiting for table %q to become ACTIVE: %w", table, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}

func checkSchema(desc *types.TableDescription, opts Options) error {
	var hash, rng string
	for _, k := range desc.KeySchema {
		switch k.KeyType {
		case types.KeyTypeHash:
			hash = aws.ToString(k.AttributeName)
		case types.KeyTypeRange:
			rng = aws.ToString(k.AttributeName)
		}
	}
	if hash != opts.PartitionKey || rng != opts.SortKey {
		want := fmt.Sprintf("only the partition key %q", opts.PartitionKey)
		if opts.SortKey != "" {
			want = fmt.Sprintf("the partition key %q and the sort key %q", opts.PartitionKey, opts.SortKey)
		}
		return fmt.Errorf("dynamodb: table %q exists with another key schema: want %s", opts.Table, want)
	}
	for _, ad := range desc.AttributeDefinitions {
		name := aws.ToString(ad.AttributeName)
		if (name == opts.PartitionKey || name == opts.SortKey) && ad.AttributeType != types.ScalarAttributeTypeS {
			return fmt.Errorf("dynamodb: table %q: key attribute %q is of type %s, want S", opts.Table, name, ad.AttributeType)
		}
	}
	return nil
}

// enableTTL turns DynamoDB's TTL on for opts.TTLAttribute, tolerating
// servers without the TTL API.
func enableTTL(ctx context.Context, client TableAPI, opts Options) error {
	out, err := client.DescribeTimeToLive(ctx, &ddb.DescribeTimeToLiveInput{TableName: aws.String(opts.Table)})
	switch {
	case unsupported(err):
		return nil
	case err != nil:
		return fmt.Errorf("dynamodb: describe TTL of table %q: %w", opts.Table, err)
	}
	if d := out.TimeToLiveDescription; d != nil {
		switch d.TimeToLiveStatus {
		case types.TimeToLiveStatusEnabled, types.TimeToLiveStatusEnabling:
			if name := aws.ToString(d.AttributeName); name != opts.TTLAttribute {
				return fmt.Errorf("dynamodb: table %q has TTL on attribute %q, not Options.TTLAttribute %q", opts.Table, name, opts.TTLAttribute)
			}
			return nil
		}
	}
	_, err = client.UpdateTimeToLive(ctx, &ddb.UpdateTimeToLiveInput{
		TableName: aws.String(opts.Table),
		TimeToLiveSpecification: &types.TimeToLiveSpecification{
			AttributeName: aws.String(opts.TTLAttribute), Enabled: aws.Bool(true),
		},
	})
	if err != nil && !unsupported(err) {
		return fmt.Errorf("dynamodb: enable TTL on %q of table %q: %w", opts.TTLAttribute, opts.Table, err)
	}
	return nil
}

// unsupported reports whether err says the server does not implement the
// operation: dynalite answers UnknownOperationException; minidyn answers
// 400 with a plain-text body, which is not DynamoDB's error format.
func unsupported(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "UnknownOperationException" {
		return true
	}
	var deser *smithy.DeserializationError
	var status interface{ HTTPStatusCode() int }
	return errors.As(err, &deser) && errors.As(err, &status) && status.HTTPStatusCode() == 400
}
