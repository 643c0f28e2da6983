package lakehouse.silver;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.math.BigDecimal;
import java.time.DateTimeException;
import java.time.LocalDate;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.sql.api.java.UDF1;
import org.apache.spark.sql.types.DataType;

/**
 * Silver's fast path for one version of one event type: a record's bytes in, its
 * fields (wire types: string, long, double) out when the record certainly satisfies
 * the version's JSON Schema, else null.
 *
 * <p>One streaming pass of Jackson's parser over the bytes does what Spark's
 * from_json, to_json and a dozen SQL predicates did. The rules come from a spec
 * that Python derives from the schema file (pipelines/silver/fastpath.py), and the
 * Python classifier stays the definition: anything unusual is declined (null), never
 * decided here. Declined: a top-level value that is not an object, a key the schema
 * does not list, a key twice, a null, an array or object value, a value not of
 * exactly its JSON type (an integer field takes no 5.0, no 2^70), a string holding
 * a lone surrogate, a byte-order mark, a date-time outside one strict form.
 *
 * <p>The row holds the properties in spec order, then, for each date-time property in
 * that order, its instant as microseconds since the epoch (UTC): the date-time is
 * read once here, not parsed again by a cast.
 */
public final class JsonSchemaFastPath implements UDF1<byte[], Row> {
  private static final long serialVersionUID = 1L;
  private static final JsonFactory JSON = new JsonFactory();
  // A date-time is read in one strict form: yyyy-MM-ddTHH:mm:ss, then at most six
  // fraction digits, then Z or +hh:mm / -hh:mm (what Python's fromisoformat and the
  // Python classifier read the same way); anything else is declined.
  private static final long INVALID = Long.MIN_VALUE;
  private static final long MICROS_PER_SECOND = 1_000_000L;
  private static final int MAX_OFFSET_SECONDS = 18 * 3600;  // java.time's ZoneOffset range

  private enum Kind { STRING, INTEGER, NUMBER }

  private static final class Property implements java.io.Serializable {
    private static final long serialVersionUID = 1L;
    final String name;
    final Kind kind;
    final boolean required;
    final Object constant;       // String, Long or BigDecimal; null when absent
    final Set<Object> allowed;   // enum; null when absent
    final BigDecimal minimum;
    final BigDecimal maximum;
    final Pattern pattern;       // matched whole
    final boolean dateTime;

    Property(JsonNode spec) {
      name = spec.get("name").asText();
      kind = Kind.valueOf(spec.get("type").asText().toUpperCase());
      required = spec.path("required").asBoolean(false);
      constant = spec.has("const") ? literal(spec.get("const")) : null;
      if (spec.has("enum")) {
        allowed = new HashSet<>();
        for (JsonNode value : spec.get("enum")) {
          allowed.add(literal(value));
        }
      } else {
        allowed = null;
      }
      minimum = spec.has("minimum") ? spec.get("minimum").decimalValue() : null;
      maximum = spec.has("maximum") ? spec.get("maximum").decimalValue() : null;
      pattern = spec.has("pattern") ? Pattern.compile(spec.get("pattern").asText()) : null;
      dateTime = spec.path("date_time").asBoolean(false);
    }

    private Object literal(JsonNode value) {
      switch (kind) {
        case STRING:
          if (!value.isTextual()) {
            throw new IllegalArgumentException(name + ": a string field's literal must be a string");
          }
          return value.asText();
        case INTEGER:
          if (!value.canConvertToExactIntegral() || !value.canConvertToLong()) {
            throw new IllegalArgumentException(name + ": an integer field's literal must be a long");
          }
          return value.asLong();
        default:
          return value.decimalValue().stripTrailingZeros();
      }
    }
  }

  private final Property[] properties;
  private final Map<String, Integer> index = new HashMap<>();
  // Row position of each property's instant (date-time properties), else -1.
  private final int[] instantAt;
  private final int width;

  /** @param spec JSON: {"properties": [{"name", "type", "required", "const", "enum",
   *  "minimum", "maximum", "pattern", "date_time"}, ...]} in the row's field order. */
  public JsonSchemaFastPath(String spec) throws IOException {
    JsonNode root = new ObjectMapper().readTree(spec);
    List<Property> found = new ArrayList<>();
    for (JsonNode property : root.get("properties")) {
      found.add(new Property(property));
    }
    if (found.size() > 64) {
      throw new IllegalArgumentException("at most 64 properties (a long bitmask tracks them)");
    }
    properties = found.toArray(new Property[0]);
    instantAt = new int[properties.length];
    int next = properties.length;
    for (int i = 0; i < properties.length; i++) {
      index.put(properties[i].name, i);
      instantAt[i] = properties[i].dateTime ? next++ : -1;
    }
    width = next;
  }

  /** Registers the fast path of one schema version as a SQL function `name`. */
  public static void register(SparkSession spark, String name, String spec, String rowType)
      throws IOException {
    spark.udf().register(name, new JsonSchemaFastPath(spec), DataType.fromJson(rowType));
  }

  @Override
  public Row call(byte[] value) {
    if (value == null || value.length == 0 || (value[0] & 0xFF) == 0xEF) {
      return null;  // 0xEF: a byte-order mark, which Python's json refuses
    }
    try (JsonParser parser = JSON.createParser(value)) {
      return parse(parser);
    } catch (IOException | RuntimeException e) {
      return null;  // not JSON, or a number Jackson refuses: the Python classifier says why
    }
  }

  private Row parse(JsonParser parser) throws IOException {
    if (parser.nextToken() != JsonToken.START_OBJECT) {
      return null;
    }
    Object[] fields = new Object[width];
    long seen = 0L;
    JsonToken token;
    while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
      Integer at = index.get(parser.currentName());
      if (at == null || (seen & (1L << at)) != 0) {
        return null;  // a key the schema does not list, or a key twice
      }
      seen |= 1L << at;
      Property property = properties[at];
      Object field = read(parser, parser.nextToken(), property);
      if (field == null || !valid(property, field)) {
        return null;
      }
      fields[at] = field;
      if (property.dateTime) {
        long micros = epochMicros((String) field);
        if (micros == INVALID) {
          return null;
        }
        fields[instantAt[at]] = micros;
      }
    }
    if (token != JsonToken.END_OBJECT || parser.nextToken() != null) {
      return null;  // trailing content after the object
    }
    for (int i = 0; i < properties.length; i++) {
      if (properties[i].required && (seen & (1L << i)) == 0) {
        return null;
      }
    }
    return RowFactory.create(fields);
  }

  /** The value under `token` as its wire type, or null when it is not exactly that type. */
  private static Object read(JsonParser parser, JsonToken token, Property property)
      throws IOException {
    switch (property.kind) {
      case STRING:
        if (token != JsonToken.VALUE_STRING) {
          return null;
        }
        String text = parser.getText();
        return wellFormed(text) ? text : null;
      case INTEGER:
        if (token != JsonToken.VALUE_NUMBER_INT) {
          return null;
        }
        JsonParser.NumberType type = parser.getNumberType();
        return type == JsonParser.NumberType.INT || type == JsonParser.NumberType.LONG
            ? parser.getLongValue() : null;
      default:
        // An integer in a number field is left to Python (it reads it as an int).
        if (token != JsonToken.VALUE_NUMBER_FLOAT) {
          return null;
        }
        double number = parser.getDoubleValue();
        return Double.isFinite(number) ? number : null;
    }
  }

  /** No unpaired UTF-16 surrogate (from a `\ud800` escape): Python would keep one. */
  private static boolean wellFormed(String text) {
    for (int i = 0; i < text.length(); i++) {
      char c = text.charAt(i);
      if (Character.isHighSurrogate(c) && i + 1 < text.length()
          && Character.isLowSurrogate(text.charAt(i + 1))) {
        i++;
      } else if (Character.isSurrogate(c)) {
        return false;
      }
    }
    return true;
  }

  private static boolean valid(Property property, Object field) {
    Object comparable = property.kind == Kind.NUMBER
        ? BigDecimal.valueOf((Double) field).stripTrailingZeros() : field;
    if (property.constant != null && !property.constant.equals(comparable)) {
      return false;
    }
    if (property.allowed != null && !property.allowed.contains(comparable)) {
      return false;
    }
    if (property.minimum != null || property.maximum != null) {
      BigDecimal number = field instanceof Long
          ? BigDecimal.valueOf((Long) field) : BigDecimal.valueOf((Double) field);
      if (property.minimum != null && number.compareTo(property.minimum) < 0) {
        return false;
      }
      if (property.maximum != null && number.compareTo(property.maximum) > 0) {
        return false;
      }
    }
    if (property.pattern != null && !property.pattern.matcher((String) field).matches()) {
      return false;
    }
    return true;
  }

  /**
   * The instant of a date-time in the strict form (see the comment above INVALID) as
   * microseconds since the epoch, or INVALID: another form, a date that does not exist
   * (Feb 30), hour 24, second 60, an offset beyond 18 hours, or a year, as written or
   * in UTC, outside 1 to 9999 (Python's datetime range).
   */
  static long epochMicros(String text) {
    int n = text.length();
    // yyyy-MM-ddTHH:mm:ss is 19 characters; then .f{1,6}; then Z (1) or +hh:mm (6).
    if (n < 20 || text.charAt(4) != '-' || text.charAt(7) != '-' || text.charAt(10) != 'T'
        || text.charAt(13) != ':' || text.charAt(16) != ':') {
      return INVALID;
    }
    int year = digits(text, 0, 4);
    int month = digits(text, 5, 2);
    int day = digits(text, 8, 2);
    int hour = digits(text, 11, 2);
    int minute = digits(text, 14, 2);
    int second = digits(text, 17, 2);
    // Year 0 is a valid proleptic year to java.time, not to Python's datetime.
    if (year < 1 || month < 0 || day < 0 || hour < 0 || hour > 23 || minute < 0
        || minute > 59 || second < 0 || second > 59) {
      return INVALID;
    }
    int at = 19;
    long fraction = 0;
    if (text.charAt(at) == '.') {
      int start = ++at;
      while (at < n && at - start < 7 && isDigit(text.charAt(at))) {
        fraction = fraction * 10 + (text.charAt(at++) - '0');
      }
      int count = at - start;
      if (count < 1 || count > 6) {
        return INVALID;
      }
      for (int k = count; k < 6; k++) {
        fraction *= 10;
      }
    }
    int offsetSeconds;
    if (at == n - 1 && text.charAt(at) == 'Z') {
      offsetSeconds = 0;
    } else if (at == n - 6 && (text.charAt(at) == '+' || text.charAt(at) == '-')
        && text.charAt(at + 3) == ':') {
      int offsetHours = digits(text, at + 1, 2);
      int offsetMinutes = digits(text, at + 4, 2);
      if (offsetHours < 0 || offsetMinutes < 0 || offsetMinutes > 59) {
        return INVALID;
      }
      offsetSeconds = offsetHours * 3600 + offsetMinutes * 60;
      if (offsetSeconds > MAX_OFFSET_SECONDS) {
        return INVALID;
      }
      if (text.charAt(at) == '-') {
        offsetSeconds = -offsetSeconds;
      }
    } else {
      return INVALID;
    }
    long epochDay;
    try {
      epochDay = LocalDate.of(year, month, day).toEpochDay();
    } catch (DateTimeException e) {
      return INVALID;  // Feb 30, month 13, day 0
    }
    long seconds = epochDay * 86_400L + hour * 3600L + minute * 60L + second - offsetSeconds;
    int utcYear = LocalDate.ofEpochDay(Math.floorDiv(seconds, 86_400L)).getYear();
    if (utcYear < 1 || utcYear > 9999) {
      return INVALID;
    }
    return seconds * MICROS_PER_SECOND + fraction;
  }

  /** The non-negative number written by `count` ASCII digits at `from`, else -1. */
  private static int digits(String text, int from, int count) {
    int value = 0;
    for (int i = from; i < from + count; i++) {
      char c = text.charAt(i);
      if (!isDigit(c)) {
        return -1;
      }
      value = value * 10 + (c - '0');
    }
    return value;
  }

  private static boolean isDigit(char c) {
    return c >= '0' && c <= '9';
  }
}
